/* Sampler: the same chain, ties and seeded stream as edgekit/runtime/sampling.py, so a seed draws the
 * same tokens from the C runtime as from Python.
 *
 * Chain: repetition penalty; greedy if temperature is 0; else top-k, top-p, min-p on the untempered
 * distribution (most likely first, equal logits by lower id), temperature, one inverse-CDF draw over
 * the kept tokens in descending probability. Arithmetic is double precision, and sums are numpy's
 * pairwise sums, as the Python code computes them. The random stream is numpy's
 * Generator(PCG64(seed)).random(): SeedSequence hashing of the seed into PCG64's 128-bit state and
 * increment, XSL-RR output, 53-bit doubles. 128-bit arithmetic is done on two 64-bit halves (32-bit
 * ARM has no __int128). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "vocab.h"

/* ---- numpy's SeedSequence + PCG64 ---- */

typedef struct {
    uint64_t hi, lo;
} u128;

static u128 add128(u128 a, u128 b) {
    u128 r = {a.hi + b.hi, a.lo + b.lo};
    r.hi += r.lo < a.lo;
    return r;
}

static u128 mul64(uint64_t a, uint64_t b) { /* full 64 x 64 -> 128 product */
    uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10;
    u128 r = {p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32), (mid << 32) | (uint32_t)p00};
    return r;
}

static u128 mul128(u128 a, u128 b) { /* low 128 bits */
    u128 r = mul64(a.lo, b.lo);
    r.hi += a.hi * b.lo + a.lo * b.hi;
    return r;
}

static const u128 PCG_MULT = {0x2360ED051FC65DA4ull, 0x4385DF649FCCF645ull};

typedef struct {
    u128 state, inc;
} pcg64;

static void pcg_step(pcg64 *g) { g->state = add128(mul128(g->state, PCG_MULT), g->inc); }

static uint64_t pcg_next(pcg64 *g) {
    pcg_step(g);
    uint64_t x = g->state.hi ^ g->state.lo;
    unsigned rot = (unsigned)(g->state.hi >> 58);
    return (x >> rot) | (x << ((64 - rot) & 63));
}

static double pcg_double(pcg64 *g) { return (double)(pcg_next(g) >> 11) * (1.0 / 9007199254740992.0); }

static uint32_t hashmix(uint32_t value, uint32_t *hash_const) {
    value ^= *hash_const;
    *hash_const *= 0x931e8875u;
    value *= *hash_const;
    return value ^ (value >> 16);
}

static uint32_t mix(uint32_t x, uint32_t y) {
    uint32_t r = 0xca01f9ddu * x - 0x4973f715u * y;
    return r ^ (r >> 16);
}

/* SeedSequence(seed).generate_state(4, uint64) feeds PCG64's seed (state) and increment. */
static void pcg_seed(pcg64 *g, uint64_t seed) {
    uint32_t entropy[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    int n_entropy = seed >> 32 ? 2 : 1; /* the seed's 32-bit words, little end first ([0] for 0) */
    uint32_t pool[4], hc = 0x43b0d7e5u;
    for (int i = 0; i < 4; i++) pool[i] = hashmix(i < n_entropy ? entropy[i] : 0, &hc);
    for (int s = 0; s < 4; s++)
        for (int d = 0; d < 4; d++)
            if (s != d) pool[d] = mix(pool[d], hashmix(pool[s], &hc));
    uint32_t words[8], hb = 0x8b51f9ddu;
    for (int i = 0; i < 8; i++) {
        uint32_t x = pool[i % 4] ^ hb;
        hb *= 0x58f38dedu;
        x *= hb;
        words[i] = x ^ (x >> 16);
    }
    uint64_t v[4];
    for (int i = 0; i < 4; i++) v[i] = (uint64_t)words[2 * i] | (uint64_t)words[2 * i + 1] << 32;
    u128 initstate = {v[0], v[1]}, initseq = {v[2], v[3]};
    g->state = (u128){0, 0};
    g->inc = (u128){(initseq.hi << 1) | (initseq.lo >> 63), (initseq.lo << 1) | 1};
    pcg_step(g);
    g->state = add128(g->state, initstate);
    pcg_step(g);
}

/* ---- numpy's arithmetic ---- */

/* np.sum of a contiguous float64 array: pairwise, 8 accumulators per block of up to 128. */
static double pairwise_sum(const double *a, size_t n) {
    if (n < 8) {
        double r = 0.0;
        for (size_t i = 0; i < n; i++) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j];
        size_t i;
        for (i = 8; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* ---- the sampler ---- */

struct ek_sampler {
    ek_sampling p;
    pcg64 rng;
    int32_t cap;
    double *z, *q;
    int32_t *order, *ids;
    uint8_t *seen;
};

ek_sampling ek_sampling_default(void) {
    ek_sampling s = {0};
    s.temperature = 0.8f;
    s.top_k = 40;
    s.top_p = 0.95f;
    s.min_p = 0.05f;
    s.repeat_penalty = 1.0f;
    s.repeat_last_n = 64;
    s.max_tokens = 256;
    return s;
}

ek_status ek_sampler_new(const ek_sampling *params, ek_sampler **out) {
    if (!params || !out) {
        ek_set_error("ek_sampler_new: NULL argument");
        return EK_ERR_INVALID;
    }
    *out = NULL;
    const ek_sampling *p = params;
    if (!(p->temperature >= 0) || p->top_k < 0 || !(p->top_p >= 0 && p->top_p <= 1) ||
        !(p->min_p >= 0 && p->min_p < 1) || !(p->repeat_penalty >= 0) || p->repeat_last_n < 0 || p->max_tokens < 0) {
        ek_set_error("invalid sampling setting (temperature %g, top_k %d, top_p %g, min_p %g, repeat_penalty %g, "
                     "repeat_last_n %d, max_tokens %d)", p->temperature, p->top_k, p->top_p, p->min_p,
                     p->repeat_penalty, p->repeat_last_n, p->max_tokens);
        return EK_ERR_INVALID;
    }
    ek_sampler *s = calloc(1, sizeof *s);
    if (!s) {
        ek_set_error("ek_sampler_new: out of memory");
        return EK_ERR_NOMEM;
    }
    s->p = *p;
    if (s->p.top_p == 0) s->p.top_p = 1;
    if (s->p.repeat_penalty == 0) s->p.repeat_penalty = 1;
    if (s->p.repeat_last_n == 0) s->p.repeat_last_n = 64;
    if (s->p.max_tokens == 0) s->p.max_tokens = 256;
    pcg_seed(&s->rng, p->seed);
    *out = s;
    return EK_OK;
}

void ek_sampler_free(ek_sampler *s) {
    if (!s) return;
    free(s->z);
    free(s->q);
    free(s->order);
    free(s->ids);
    free(s->seen);
    free(s);
}

static int better(const double *z, int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); }

/* Sort ids by z descending, equal values by lower id (a merge sort; tmp holds n ids). */
static void sort_desc(int32_t *a, int32_t n, const double *z, int32_t *tmp) {
    for (int32_t w = 1; w < n; w *= 2) {
        for (int32_t lo = 0; lo < n; lo += 2 * w) {
            int32_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n, i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = better(z, a[j], a[i]) ? a[j++] : a[i++];
            while (i < mid) tmp[k++] = a[i++];
            while (j < hi) tmp[k++] = a[j++];
        }
        memcpy(a, tmp, (size_t)n * sizeof *a);
    }
}

static int by_id(const void *pa, const void *pb) {
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return a < b ? -1 : a > b;
}

/* The k best ids of z[0..n) in order (a bounded min-heap, then a sort): top-k without sorting the vocab. */
static void top_k_ids(const double *z, int32_t n, int32_t k, int32_t *out) {
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) {
        if (m == k && !better(z, i, out[0])) continue;
        int32_t at;
        if (m < k) { /* sift up */
            at = m++;
            while (at > 0 && better(z, out[(at - 1) / 2], i)) {
                out[at] = out[(at - 1) / 2];
                at = (at - 1) / 2;
            }
            out[at] = i;
            continue;
        }
        at = 0; /* replace the worst (root), sift down */
        for (;;) {
            int32_t c = 2 * at + 1;
            if (c >= m) break;
            if (c + 1 < m && better(z, out[c], out[c + 1])) c++;
            if (!better(z, i, out[c])) break;
            out[at] = out[c];
            at = c;
        }
        out[at] = i;
    }
}

int32_t ek_sampler_sample(ek_sampler *s, const float *logits, int32_t n_vocab, const int32_t *recent, int32_t n_recent) {
    if (!s || !logits || n_vocab <= 0 || n_recent < 0 || (n_recent > 0 && !recent)) {
        ek_set_error("ek_sampler_sample: bad argument");
        return -1;
    }
    if (n_vocab > s->cap) {
        double *z = realloc(s->z, (size_t)n_vocab * sizeof *z), *q = z ? realloc(s->q, (size_t)n_vocab * sizeof *q) : NULL;
        if (z) s->z = z;
        if (q) s->q = q;
        int32_t *o = q ? realloc(s->order, (size_t)n_vocab * sizeof *o) : NULL;
        if (o) s->order = o;
        int32_t *ids = o ? realloc(s->ids, (size_t)n_vocab * sizeof *ids) : NULL;
        if (ids) s->ids = ids;
        uint8_t *seen = ids ? realloc(s->seen, (size_t)n_vocab) : NULL;
        if (!seen) {
            ek_set_error("ek_sampler_sample: out of memory");
            return -1;
        }
        s->seen = seen;
        memset(seen, 0, (size_t)n_vocab);
        s->cap = n_vocab;
    }
    const ek_sampling *p = &s->p;
    double *z = s->z, *q = s->q;
    for (int32_t i = 0; i < n_vocab; i++) z[i] = isnan(logits[i]) ? -INFINITY : (double)logits[i];

    /* repetition penalty: once per distinct token among the last repeat_last_n */
    double pen = p->repeat_penalty;
    if (pen != 1.0 && n_recent > 0) {
        int32_t from = n_recent > p->repeat_last_n ? n_recent - p->repeat_last_n : 0;
        for (int32_t i = from; i < n_recent; i++) {
            int32_t t = recent[i];
            if (t < 0 || t >= n_vocab || s->seen[t]) continue;
            s->seen[t] = 1;
            z[t] = z[t] > 0 ? z[t] / pen : z[t] * pen;
        }
        for (int32_t i = from; i < n_recent; i++)
            if (recent[i] >= 0 && recent[i] < n_vocab) s->seen[recent[i]] = 0;
    }
    if (p->temperature <= 0) {
        int32_t best = 0;
        for (int32_t i = 1; i < n_vocab; i++)
            if (z[i] > z[best]) best = i;
        return best;
    }

    /* top-k, top-p, min-p over the most likely first */
    int32_t *order = s->order, n = n_vocab;
    if (p->top_k > 0 && p->top_k < n_vocab) {
        n = p->top_k;
        top_k_ids(z, n_vocab, n, order);
    } else {
        for (int32_t i = 0; i < n_vocab; i++) order[i] = i;
    }
    sort_desc(order, n, z, s->ids);
    for (int32_t j = 0; j < n; j++) q[j] = exp(z[order[j]] - z[order[0]]);
    double sum = pairwise_sum(q, (size_t)n);
    for (int32_t j = 0; j < n; j++) q[j] /= sum;
    if (p->top_p < 1.0f) {
        double top_p = p->top_p, c = 0;
        int32_t keep = n;
        for (int32_t j = 0; j < n; j++) { /* the first position where the running sum reaches top_p */
            c += q[j];
            if (c >= top_p) {
                keep = j + 1;
                break;
            }
        }
        n = keep;
        sum = pairwise_sum(q, (size_t)n);
        for (int32_t j = 0; j < n; j++) q[j] /= sum;
    }
    if (p->min_p > 0) {
        double thr = (double)p->min_p * q[0];
        int32_t keep = 0;
        for (int32_t j = 0; j < n; j++) keep += q[j] >= thr;
        n = keep > 0 ? keep : 1;
    }

    /* temperature over the kept tokens, in id order (as numpy's boolean mask orders them) */
    int32_t *ids = s->ids;
    memcpy(ids, order, (size_t)n * sizeof *ids);
    qsort(ids, (size_t)n, sizeof *ids, by_id);
    double t = p->temperature, mx = -INFINITY;
    for (int32_t j = 0; j < n; j++) {
        q[j] = z[ids[j]] / t;
        if (q[j] > mx) mx = q[j];
    }
    for (int32_t j = 0; j < n; j++) q[j] = exp(q[j] - mx);
    sum = pairwise_sum(q, (size_t)n);
    /* probabilities back into z (indexed by id), dropping those that underflowed to 0 */
    int32_t m = 0;
    for (int32_t j = 0; j < n; j++) {
        double pr = q[j] / sum;
        if (pr > 0) {
            z[ids[j]] = pr;
            ids[m++] = ids[j];
        }
    }
    sort_desc(ids, m, z, order);
    double c = 0;
    for (int32_t j = 0; j < m; j++) q[j] = c += z[ids[j]];
    double u = pcg_double(&s->rng) * q[m - 1];
    int32_t j = 0;
    while (j < m && !(q[j] > u)) j++; /* searchsorted(side="right") */
    return ids[j < m ? j : m - 1];
}
