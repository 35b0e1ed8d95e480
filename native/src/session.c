/* ek_session: the KV cache and the forward pass (llama2.c in spirit, ggml's arithmetic in detail).
 *
 * One batch of tokens goes through each layer as a whole: the projections are GEMMs over the
 * batch (ek_matmul_q, activations quantized once per input and type), decode is the same code with
 * one token (GEMV). Attention runs over (token, head) pairs on matmul's persistent thread pool.
 * Norms, RoPE, softmax and SiLU follow ggml's CPU code (float math, double sums where ggml has
 * them), so logits match llama.cpp's to float rounding. Nothing is allocated per token. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "kernels.h"
#include "runtime.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* fp16 -> fp32 by table: the F16 KV cache is read once per cached position and head */
static float fp16_table[1 << 16];
static pthread_once_t fp16_once = PTHREAD_ONCE_INIT;
static void fp16_init(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) fp16_table[i] = ek_fp16_to_fp32((uint16_t)i);
}

/* Physical cores (distinct package/core ids in Linux's sysfs; SMT siblings share one), at most 8;
 * the online CPUs where sysfs does not say. */
static int default_threads(void) {
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    int n = online < 1 ? 1 : (int)online, cores = 0;
    long seen[64];
    for (int cpu = 0; cpu < n && cpu < 64; cpu++) {
        char path[96];
        long core = -1, pkg = 0;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/core_id", cpu);
        FILE *f = fopen(path, "r");
        if (f == NULL || fscanf(f, "%ld", &core) != 1) core = -1;
        if (f != NULL) fclose(f);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", cpu);
        f = fopen(path, "r");
        if (f == NULL || fscanf(f, "%ld", &pkg) != 1) pkg = 0;
        if (f != NULL) fclose(f);
        if (core < 0) { /* no topology: count CPUs */
            cores = 0;
            break;
        }
        const long id = pkg << 20 | core;
        int dup = 0;
        for (int i = 0; i < cores; i++) dup |= seen[i] == id;
        if (!dup) seen[cores++] = id;
    }
    if (cores > 0) n = cores;
    return n > 8 ? 8 : n;
}

void ek_session_free(ek_session *s) {
    if (s == NULL) return;
    float *bufs[] = {s->x, s->xn, s->q, s->k, s->v, s->att, s->tmp, s->ffa, s->ffb, s->rope, s->scores, s->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s->xq);
    free(s->tokens);
    free(s->kc);
    free(s->vc);
    free(s);
}

static void *alloc(size_t n, int *ok) {
    void *p = n ? malloc(n) : NULL;
    if (n && p == NULL) *ok = 0;
    return p;
}

ek_status ek_session_new(const ek_model *m, const ek_session_params *params, ek_session **out) {
    if (m == NULL || out == NULL) {
        ek_set_error("ek_session_new: NULL model or out");
        return EK_ERR_INVALID;
    }
    *out = NULL;
    ek_session_params p = params ? *params : (ek_session_params){0};
    if (p.n_ctx < 0 || p.n_threads < 0 || p.n_threads_batch < 0 || p.n_batch < 0 || (p.kv_f32 != 0 && p.kv_f32 != 1)) {
        ek_set_error("ek_session_new: negative n_ctx/n_threads/n_batch, or kv_f32 not 0 or 1");
        return EK_ERR_INVALID;
    }
    if (p.n_ctx == 0) p.n_ctx = m->n_ctx_train < 4096 ? m->n_ctx_train : 4096;
    if (p.n_threads == 0) p.n_threads = default_threads();
    if (p.n_threads_batch == 0) p.n_threads_batch = p.n_threads;
    if (p.n_batch == 0) p.n_batch = 512;
    if (p.n_batch > p.n_ctx) p.n_batch = p.n_ctx;
    ek_session *s = calloc(1, sizeof *s);
    if (s == NULL) {
        ek_set_error("ek_session_new: out of memory");
        return EK_ERR_NOMEM;
    }
    s->m = m;
    s->p = p;
    s->kv_elem = p.kv_f32 ? 4 : 2;
    const size_t nb = (size_t)p.n_batch, e = (size_t)m->n_embd, hd = (size_t)m->head_dim;
    const size_t nq = (size_t)m->n_head * hd, nkv = (size_t)m->n_head_kv * hd, ff = (size_t)m->n_ff;
    size_t wide = nq + 2 * nkv; /* the widest projection output: fused qkv, fused gate+up, or e */
    if (wide < 2 * ff) wide = 2 * ff;
    if (wide < e) wide = e;
    size_t cols = e > nq ? e : nq; /* the widest matmul input */
    if (cols < ff) cols = ff;
    const int nth = p.n_threads > p.n_threads_batch ? p.n_threads : p.n_threads_batch;
    int ok = 1;
    const size_t kv_bytes = (size_t)m->n_layer * (size_t)p.n_ctx * nkv * s->kv_elem;
    s->kc = alloc(kv_bytes, &ok);
    s->vc = alloc(kv_bytes, &ok);
    s->x = alloc(nb * e * 4, &ok);
    s->xn = alloc(nb * cols * 4, &ok);
    s->q = alloc(nb * nq * 4, &ok);
    s->k = alloc(nb * nkv * 4, &ok);
    s->v = alloc(nb * nkv * 4, &ok);
    s->att = alloc(nb * nq * 4, &ok);
    s->tmp = alloc(nb * wide * 4, &ok);
    s->ffa = alloc(nb * ff * 4, &ok);
    s->ffb = alloc(nb * ff * 4, &ok);
    s->rope = alloc(nb * (size_t)m->n_rot * 4, &ok);
    const size_t group = (size_t)(m->n_head / m->n_head_kv); /* query heads per kv head (att_task's item) */
    s->scores = alloc((size_t)nth * (group * (size_t)p.n_ctx + 2 * hd) * 4, &ok);
    s->xq = alloc(nb * (cols / 32 * 36 + cols * 2), &ok); /* >= any activation row: Q8_1/Q8_K/BF16 */
    s->logits = alloc((size_t)m->n_vocab * 4, &ok);
    s->logits_cap = 1;
    s->tokens = alloc((size_t)p.n_ctx * sizeof *s->tokens, &ok);
    if (!ok) {
        ek_session_free(s);
        ek_set_error("ek_session_new: out of memory (KV cache of %zu MiB for n_ctx=%d)", 2 * kv_bytes >> 20, p.n_ctx);
        return EK_ERR_NOMEM;
    }
    atomic_init(&s->abort, 0);
    s->stats.load_ms = m->load_ms;
    pthread_once(&fp16_once, fp16_init);
    *out = s;
    return EK_OK;
}

/* ---- elementwise pieces, as ggml computes them ---- */

/* y = x / sqrt(mean(x^2) + eps) * w (ggml_rms_norm then ggml_mul) */
static void rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

/* cos/sin pairs for one position, as ggml's rope cache: theta multiplied down in float */
static void rope_cache(const ek_model *m, int32_t pos, float *cs) {
    const float theta_scale = powf(m->rope_base, -2.0f / (float)m->n_rot);
    float theta = (float)pos;
    for (int i = 0; i < m->n_rot; i += 2) {
        const float ff = m->rope_freqs ? m->rope_freqs[i / 2] : 1.0f;
        const float t = m->rope_freq_scale * (theta / ff);
        cs[i] = cosf(t);
        cs[i + 1] = sinf(t);
        theta *= theta_scale;
    }
}

static void rope(const ek_model *m, float *x, int nheads, const float *cs) {
    const int hd = m->head_dim, nr = m->n_rot;
    for (int h = 0; h < nheads; h++, x += hd) {
        for (int i = 0; i < nr; i += 2) {
            const int a = m->rope_neox ? i / 2 : i, b = m->rope_neox ? i / 2 + nr / 2 : i + 1;
            const float x0 = x[a], x1 = x[b];
            x[a] = x0 * cs[i] - x1 * cs[i + 1];
            x[b] = x0 * cs[i + 1] + x1 * cs[i];
        }
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

/* ---- matmul with activations quantized once per (input, vec type) ---- */

typedef struct {
    ek_session *s;
    const float *x; /* input whose quantization xq holds, or NULL */
    int vt;
    int64_t nt;
} act_cache;

static void mm(act_cache *c, const ek_weight *w, const float *x, int64_t nt, float *y, int nth) {
    const int vt = ek_vec_type(w->type);
    if (vt == EK_TYPE_F32) {
        ek_matmul_q(w->type, w->data, w->nrows, w->ncols, x, nt, y, nth);
        return;
    }
    if (c->x != x || c->vt != vt || c->nt != nt) {
        ek_quantize_activations(w->type, x, c->s->xq, nt, w->ncols);
        c->x = x, c->vt = vt, c->nt = nt;
    }
    ek_matmul_q(w->type, w->data, w->nrows, w->ncols, c->s->xq, nt, y, nth);
}

/* ---- attention over (token, head) pairs ---- */

typedef struct {
    ek_session *s;
    int il, nt;
    int32_t pos0;
    atomic_int next;
} att_job;

/* A cached K or V row of one kv head as floats: F32 in place, F16 converted into buf. */
static const float *kv_row(const ek_session *s, const uint8_t *row, int hd, float *buf) {
    if (s->kv_elem == 4) return (const float *)row;
    for (int c = 0; c < hd; c++) buf[c] = fp16_table[((const uint16_t *)row)[c]];
    return buf;
}

/* One item is a (token, kv head) pair with the `group` query heads that share it: each cached K and V row is
 * read (and converted from F16) once for all of them, and their dot products run as independent chains.
 * Each head's sums keep their order (over c for q.k, over t for the weighted V sum), so the result is the same
 * as one head at a time. */
static void att_task(void *arg, int ith, int nth) {
    (void)nth;
    att_job *j = arg;
    ek_session *s = j->s;
    const ek_model *m = s->m;
    const int hd = m->head_dim, nkv = m->n_head_kv * hd, group = m->n_head / m->n_head_kv;
    const size_t row = (size_t)nkv * s->kv_elem, layer = (size_t)s->p.n_ctx * row;
    const float scale = 1.0f / sqrtf((float)hd);
    float *sc = s->scores + (size_t)ith * ((size_t)group * (size_t)s->p.n_ctx + 2 * (size_t)hd);
    float *kbuf = sc + (size_t)group * (size_t)s->p.n_ctx, *vbuf = kbuf + hd;
    for (;;) {
        const int item = atomic_fetch_add(&j->next, 1);
        if (item >= j->nt * m->n_head_kv) break;
        const int i = item / m->n_head_kv, kvh = item % m->n_head_kv, h0 = kvh * group;
        const int32_t p = j->pos0 + i, n_ctx = s->p.n_ctx;
        const int32_t lo = m->n_swa > 0 && p >= m->n_swa ? p - m->n_swa + 1 : 0;
        const float *q = s->q + (size_t)i * m->n_head * hd + (size_t)h0 * hd;
        const uint8_t *kc = s->kc + (size_t)j->il * layer + (size_t)kvh * hd * s->kv_elem;
        const uint8_t *vc = s->vc + (size_t)j->il * layer + (size_t)kvh * hd * s->kv_elem;
        float mx[EK_MAX_GROUP];
        for (int g = 0; g < group; g++) mx[g] = -INFINITY;
        for (int32_t t = lo; t <= p; t++) {
            const float *kf = kv_row(s, kc + (size_t)t * row, hd, kbuf);
            float d[EK_MAX_GROUP] = {0};
            for (int c = 0; c < hd; c++)
                for (int g = 0; g < group; g++) d[g] += q[(size_t)g * hd + c] * kf[c];
            for (int g = 0; g < group; g++) {
                float *sg = sc + (size_t)g * n_ctx;
                sg[t] = d[g] * scale;
                mx[g] = sg[t] > mx[g] ? sg[t] : mx[g];
            }
        }
        float inv[EK_MAX_GROUP];
        for (int g = 0; g < group; g++) {
            float *sg = sc + (size_t)g * n_ctx;
            double sum = 0.0;
            for (int32_t t = lo; t <= p; t++) {
                sg[t] = expf(sg[t] - mx[g]);
                sum += (double)sg[t];
            }
            inv[g] = (float)(1.0 / sum);
        }
        float *out = s->att + (size_t)i * m->n_head * hd + (size_t)h0 * hd;
        memset(out, 0, (size_t)group * hd * 4);
        for (int32_t t = lo; t <= p; t++) {
            const float *vf = kv_row(s, vc + (size_t)t * row, hd, vbuf);
            for (int g = 0; g < group; g++) {
                const float w = sc[(size_t)g * n_ctx + t] * inv[g];
                float *og = out + (size_t)g * hd;
                for (int c = 0; c < hd; c++) og[c] += w * vf[c];
            }
        }
    }
}

static void kv_store(ek_session *s, int il, int32_t pos, const float *k, const float *v) {
    const size_t nkv = (size_t)s->m->n_head_kv * s->m->head_dim, row = nkv * s->kv_elem;
    uint8_t *kd = s->kc + ((size_t)il * s->p.n_ctx + pos) * row, *vd = s->vc + ((size_t)il * s->p.n_ctx + pos) * row;
    if (s->kv_elem == 4) {
        memcpy(kd, k, row);
        memcpy(vd, v, row);
        return;
    }
    for (size_t c = 0; c < nkv; c++) {
        ((uint16_t *)kd)[c] = ek_fp32_to_fp16(k[c]);
        ((uint16_t *)vd)[c] = ek_fp32_to_fp16(v[c]);
    }
}

/* ---- one batch through the model; logits of rows out0.. into out ---- */

static int forward(ek_session *s, const int32_t *tokens, int nt, int32_t pos0, int out0, float *out) {
    const ek_model *m = s->m;
    const int e = m->n_embd, hd = m->head_dim, nq = m->n_head * hd, nkv = m->n_head_kv * hd, ff = m->n_ff;
    const int nth = nt > 1 ? s->p.n_threads_batch : s->p.n_threads;
    act_cache ac = {s, NULL, -1, 0};
    for (int i = 0; i < nt; i++) {
        ek_dequant_row(m->tok_embd.type, (const uint8_t *)m->tok_embd.data + (size_t)tokens[i] *
                       ek_row_size(m->tok_embd.type, e), s->x + (size_t)i * e, e);
        rope_cache(m, pos0 + i, s->rope + (size_t)i * m->n_rot);
    }
    for (int il = 0; il < m->n_layer; il++) {
        const ek_layer *l = &m->layers[il];
        for (int i = 0; i < nt; i++) rmsnorm(s->xn + (size_t)i * e, s->x + (size_t)i * e, l->attn_norm, e, m->rms_eps);
        ac.x = NULL;
        if (l->qkv.data != NULL) {
            mm(&ac, &l->qkv, s->xn, nt, s->tmp, nth);
            for (int i = 0; i < nt; i++) {
                const float *r = s->tmp + (size_t)i * (nq + 2 * nkv);
                memcpy(s->q + (size_t)i * nq, r, (size_t)nq * 4);
                memcpy(s->k + (size_t)i * nkv, r + nq, (size_t)nkv * 4);
                memcpy(s->v + (size_t)i * nkv, r + nq + nkv, (size_t)nkv * 4);
            }
        } else {
            mm(&ac, &l->q, s->xn, nt, s->q, nth);
            mm(&ac, &l->k, s->xn, nt, s->k, nth);
            mm(&ac, &l->v, s->xn, nt, s->v, nth);
        }
        for (int i = 0; i < nt; i++) {
            float *q = s->q + (size_t)i * nq, *k = s->k + (size_t)i * nkv, *v = s->v + (size_t)i * nkv;
            if (l->bq != NULL) {
                for (int c = 0; c < nq; c++) q[c] += l->bq[c];
                for (int c = 0; c < nkv; c++) k[c] += l->bk[c], v[c] += l->bv[c];
            }
            if (l->q_norm != NULL) {
                for (int h = 0; h < m->n_head; h++) rmsnorm(q + h * hd, q + h * hd, l->q_norm, hd, m->rms_eps);
                for (int h = 0; h < m->n_head_kv; h++) rmsnorm(k + h * hd, k + h * hd, l->k_norm, hd, m->rms_eps);
            }
            rope(m, q, m->n_head, s->rope + (size_t)i * m->n_rot);
            rope(m, k, m->n_head_kv, s->rope + (size_t)i * m->n_rot);
            kv_store(s, il, pos0 + i, k, v);
        }
        att_job job = {.s = s, .il = il, .nt = nt, .pos0 = pos0};
        atomic_init(&job.next, 0);
        const int work = nt * m->n_head_kv;
        ek_parallel(att_task, &job, nth < work ? nth : work);
        ac.x = NULL;
        mm(&ac, &l->o, s->att, nt, s->tmp, nth);
        for (size_t c = 0; c < (size_t)nt * e; c++) s->x[c] += s->tmp[c];

        for (int i = 0; i < nt; i++) rmsnorm(s->xn + (size_t)i * e, s->x + (size_t)i * e, l->ffn_norm, e, m->rms_eps);
        ac.x = NULL;
        if (l->gate.data != NULL) {
            mm(&ac, &l->gate, s->xn, nt, s->ffa, nth);
            mm(&ac, &l->up, s->xn, nt, s->ffb, nth);
            for (size_t c = 0; c < (size_t)nt * ff; c++) s->ffb[c] = silu(s->ffa[c]) * s->ffb[c];
        } else { /* gate and up rows in one matrix (Phi-3): gate first */
            mm(&ac, &l->up, s->xn, nt, s->tmp, nth);
            for (int i = 0; i < nt; i++) {
                const float *g = s->tmp + (size_t)i * 2 * ff, *u = g + ff;
                for (int c = 0; c < ff; c++) s->ffb[(size_t)i * ff + c] = silu(g[c]) * u[c];
            }
        }
        ac.x = NULL;
        mm(&ac, &l->down, s->ffb, nt, s->tmp, nth);
        for (size_t c = 0; c < (size_t)nt * e; c++) s->x[c] += s->tmp[c];
        if (atomic_load(&s->abort)) return 0;
    }
    if (out != NULL) {
        const int rows = nt - out0;
        for (int i = 0; i < rows; i++) {
            rmsnorm(s->xn + (size_t)i * e, s->x + (size_t)(out0 + i) * e, m->output_norm, e, m->rms_eps);
        }
        ac.x = NULL;
        mm(&ac, &m->output, s->xn, rows, out, nth);
    }
    return 1;
}

ek_status ek_decode(ek_session *s, const int32_t *tokens, int32_t n, int32_t pos, int logits_all) {
    if (s == NULL || n < 0 || (n > 0 && tokens == NULL)) {
        ek_set_error("ek_decode: NULL session or tokens, or negative count");
        return EK_ERR_INVALID;
    }
    if (pos < 0 || pos > s->n_past) {
        ek_set_error("ek_decode: pos %d is outside 0..%d (the positions cached)", pos, s->n_past);
        return EK_ERR_INVALID;
    }
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= s->m->n_vocab) {
            ek_set_error("ek_decode: token %d at index %d is outside the vocabulary (0..%d)", tokens[i], i,
                         s->m->n_vocab - 1);
            return EK_ERR_INVALID;
        }
    }
    if ((int64_t)pos + n > s->p.n_ctx) {
        ek_set_error("ek_decode: %d tokens at position %d do not fit in the context of %d", n, pos, s->p.n_ctx);
        return EK_CONTEXT_FULL;
    }
    const size_t rows = logits_all ? (size_t)n : 1, nv = (size_t)s->m->n_vocab;
    if (rows > s->logits_cap) {
        float *l = realloc(s->logits, rows * nv * 4);
        if (l == NULL) {
            ek_set_error("ek_decode: out of memory for %zu rows of logits", rows);
            return EK_ERR_NOMEM;
        }
        s->logits = l;
        s->logits_cap = rows;
    }
    s->n_past = pos;
    if (n > 0) memcpy(s->tokens + pos, tokens, (size_t)n * sizeof *tokens); /* valid up to n_past */
    s->n_logits = 0;
    s->logits_all = logits_all != 0;
    const double t0 = now_ms();
    ek_status st = EK_OK;
    for (int32_t b = 0; b < n; b += s->p.n_batch) {
        if (atomic_exchange(&s->abort, 0)) {
            st = EK_ABORTED;
            break;
        }
        const int nt = n - b < s->p.n_batch ? n - b : s->p.n_batch;
        const int last = b + nt == n;
        float *out = logits_all ? s->logits + (size_t)b * nv : last ? s->logits : NULL;
        if (!forward(s, tokens + b, nt, pos + b, logits_all ? 0 : nt - 1, out)) {
            atomic_store(&s->abort, 0);
            st = EK_ABORTED;
            break;
        }
        s->n_past = pos + b + nt;
        if (last) s->n_logits = (int32_t)rows;
    }
    const double ms = now_ms() - t0;
    if (n == 1) {
        s->stats.decode_ms += ms;
        s->stats.n_decode += s->n_past - pos;
    } else {
        s->stats.prefill_ms += ms;
        s->stats.n_prefill += s->n_past - pos;
    }
    if (st == EK_ABORTED) ek_set_error("ek_decode: aborted (%d positions cached)", s->n_past);
    return st;
}

const float *ek_logits(const ek_session *s, int32_t i) {
    if (s == NULL || s->n_logits == 0) return NULL;
    if (i == -1) i = s->n_logits - 1;
    if (i < 0 || i >= s->n_logits) return NULL;
    return s->logits + (size_t)i * (size_t)s->m->n_vocab;
}

int32_t ek_session_n_past(const ek_session *s) { return s ? s->n_past : 0; }

void ek_abort(ek_session *s) {
    if (s != NULL) atomic_store(&s->abort, 1);
}

ek_status ek_session_stats(const ek_session *s, ek_stats *st) {
    if (s == NULL || st == NULL) {
        ek_set_error("ek_session_stats: NULL session or stats");
        return EK_ERR_INVALID;
    }
    *st = s->stats;
    struct rusage ru;
    /* ru_maxrss is in KiB on Linux and in bytes on macOS */
#if defined(__APPLE__)
    st->peak_rss_bytes = getrusage(RUSAGE_SELF, &ru) == 0 ? (int64_t)ru.ru_maxrss : 0;
#else
    st->peak_rss_bytes = getrusage(RUSAGE_SELF, &ru) == 0 ? (int64_t)ru.ru_maxrss * 1024 : 0;
#endif
    return EK_OK;
}
