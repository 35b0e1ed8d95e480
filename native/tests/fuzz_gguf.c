/* Mutation fuzzer for ek_model_load: takes real GGUF files, damages their headers (bit flips, counts,
 * lengths and offsets overwritten with edge values, truncations, inserted or deleted bytes) and loads
 * each result; a file that still loads is also run for two tokens. Built with
 * -fsanitize=address,undefined -fno-sanitize-recover (tests/test_native_runtime.py), so any
 * out-of-bounds read, overflow or leak-free crash ends the run with a report.
 *
 * usage: fuzz_gguf SECONDS WORKFILE SEED.gguf[:HEADER_BYTES] ...
 * prints "tried N refused R loaded L" and exits 0 when every input was either refused or loaded. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgekit.h"

typedef struct {
    uint8_t *data;
    size_t size, header; /* mutations land in the first `header` bytes */
} seed;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) { /* xorshift64*: reproducible runs */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static const uint64_t edge_values[] = {0, 1, 2, 3, 4, 7, 31, 32, 33, 255, 256, 4095, 65535, 65536, 0x7fffffff,
                                       0x80000000u, 0xffffffffu, 0x100000000ull, 0x7fffffffffffffffull,
                                       0x8000000000000000ull, 0xffffffffffffffffull};

/* One to four mutations of a copy of s into buf; returns the new length. */
static size_t mutate(const seed *s, uint8_t *buf, size_t cap) {
    size_t n = s->size;
    memcpy(buf, s->data, n);
    const int count = 1 + (int)(rnd() % 4);
    for (int k = 0; k < count; k++) {
        const size_t h = s->header < n ? s->header : n;
        const size_t at = h ? (size_t)(rnd() % h) : 0;
        switch (rnd() % 6) {
        case 0: buf[at] ^= (uint8_t)(1u << (rnd() % 8)); break; /* bit flip */
        case 1: buf[at] = (uint8_t)rnd(); break;
        case 2: { /* a count, length or offset: an edge value as u32 or u64 */
            uint64_t v = edge_values[rnd() % (sizeof edge_values / sizeof edge_values[0])];
            if (rnd() % 4 == 0) v = n - (rnd() % 64); /* near the file size */
            const size_t w = rnd() % 2 ? 8 : 4;
            if (at + w <= n) memcpy(buf + at, &v, w);
            break;
        }
        case 3: n = at; break; /* truncate inside the header */
        case 4: n = (size_t)(rnd() % (n + 1)); break; /* truncate anywhere */
        case 5: { /* insert or delete a few bytes: everything after shifts */
            const size_t d = 1 + rnd() % 8;
            if (rnd() % 2 && n + d <= cap) {
                memmove(buf + at + d, buf + at, n - at);
                for (size_t i = 0; i < d; i++) buf[at + i] = (uint8_t)rnd();
                n += d;
            } else if (at + d <= n) {
                memmove(buf + at, buf + at + d, n - at - d);
                n -= d;
            }
            break;
        }
        }
    }
    return n;
}

static int load_seed(const char *arg, seed *s) {
    char path[4096];
    snprintf(path, sizeof path, "%s", arg);
    char *colon = strrchr(path, ':');
    s->header = 0;
    if (colon != NULL) {
        *colon = 0;
        s->header = (size_t)strtoull(colon + 1, NULL, 10);
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) return 0;
    fseek(f, 0, SEEK_END);
    s->size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    s->data = malloc(s->size);
    const int ok = s->data != NULL && fread(s->data, 1, s->size, f) == s->size;
    fclose(f);
    if (s->header == 0 || s->header > s->size) s->header = s->size;
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s SECONDS WORKFILE SEED.gguf[:HEADER_BYTES] ...\n", argv[0]);
        return 2;
    }
    const double seconds = atof(argv[1]);
    const char *work = argv[2];
    const int nseeds = argc - 3;
    seed *seeds = calloc((size_t)nseeds, sizeof *seeds);
    size_t cap = 0;
    for (int i = 0; i < nseeds; i++) {
        if (!load_seed(argv[3 + i], &seeds[i])) {
            fprintf(stderr, "cannot read %s\n", argv[3 + i]);
            return 2;
        }
        if (seeds[i].size + 64 > cap) cap = seeds[i].size + 64;
    }
    uint8_t *buf = malloc(cap);
    long tried = 0, refused = 0, loaded = 0, bad_status = 0;
    const time_t end = time(NULL) + (time_t)seconds;
    while (time(NULL) < end) {
        const seed *s = &seeds[tried % nseeds];
        const size_t n = mutate(s, buf, cap);
        FILE *f = fopen(work, "wb");
        if (f == NULL || fwrite(buf, 1, n, f) != n) {
            fprintf(stderr, "cannot write %s\n", work);
            return 2;
        }
        fclose(f);
        tried++;
        ek_model *m = NULL;
        const ek_status st = ek_model_load(work, NULL, &m);
        if (st == EK_OK) {
            loaded++;
            ek_session *sess = NULL;
            if (ek_session_new(m, &(ek_session_params){.n_ctx = 8, .n_threads = 1}, &sess) == EK_OK) {
                const int32_t toks[2] = {0, 1};
                ek_decode(sess, toks, 2, 0, 1);
                ek_session_free(sess);
            }
            ek_model_free(m);
        } else {
            refused++;
            /* a refusal must be a load error with a message naming the file */
            if ((st != EK_ERR_FORMAT && st != EK_ERR_UNSUPPORTED && st != EK_ERR_IO) ||
                strstr(ek_last_error(), work) == NULL) {
                bad_status++;
                if (bad_status <= 5) fprintf(stderr, "status %d, message '%s'\n", st, ek_last_error());
            }
        }
    }
    printf("tried %ld refused %ld loaded %ld bad-status %ld\n", tried, refused, loaded, bad_status);
    free(buf);
    for (int i = 0; i < nseeds; i++) free(seeds[i].data);
    free(seeds);
    return bad_status ? 1 : 0;
}
