/* Standalone kernel test: every level this CPU can run against the scalar reference, on odd
 * shapes and edge values, for every weight type. Built natively or cross-built and run under
 * qemu-user; prints the features found and the level picked at load time, so a harness can
 * check that dispatch chose what the (emulated) CPU can execute.
 * Exit status: 0 all passed, 1 a mismatch, 2 a setup problem. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgekit.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static float uniform(void) { return (float)rnd() / 2147483648.0f - 1.0f; } /* [-1, 1) */
static float gauss(void) {                                                   /* rough N(0,1) */
    float s = 0;
    for (int i = 0; i < 12; i++) s += (uniform() + 1.0f) * 0.5f;
    return s - 6.0f;
}

enum fill { F_GAUSS, F_ZERO, F_HUGE, F_EQUAL, F_NEG_EQUAL, F_OUTLIER, F_TINY };
static const char *fill_name[] = {"gauss", "zero", "huge", "equal", "neg-equal", "outlier", "tiny"};

static void fill(float *v, int64_t n, enum fill f) {
    for (int64_t i = 0; i < n; i++) {
        switch (f) {
        case F_GAUSS: v[i] = gauss(); break;
        case F_ZERO: v[i] = 0.0f; break;
        case F_HUGE: v[i] = gauss() * 3e4f; break;
        case F_EQUAL: v[i] = 0.37f; break;
        case F_NEG_EQUAL: v[i] = -2.5f; break;
        case F_OUTLIER: v[i] = (i % 97 == 5) ? 60.0f * (i % 2 ? -1.0f : 1.0f) : gauss() * 0.01f; break;
        case F_TINY: v[i] = gauss() * 1e-6f; break;
        }
    }
}

static int failures = 0, checks = 0;

/* Weights of `type` from floats (quantized with ek_quantize), or random raw blocks (`raw`):
 * every bit pattern of the quants and scales, with finite fp16 block scales. */
static void *make_weights(int type, int64_t nrows, int64_t ncols, enum fill f, int raw) {
    const size_t rs = ek_row_size(type, ncols);
    uint8_t *w = malloc(rs * (size_t)nrows);
    float *src = malloc(sizeof(float) * (size_t)(nrows * ncols));
    fill(src, nrows * ncols, f);
    if (type == EK_TYPE_F32) {
        memcpy(w, src, rs * (size_t)nrows);
    } else if (type == EK_TYPE_F16) {
        /* truncate to half precision (any finite halves will do for a kernel test) */
        uint16_t *h = (uint16_t *)w;
        for (int64_t i = 0; i < nrows * ncols; i++) {
            float v = src[i];
            uint32_t u;
            memcpy(&u, &v, 4);
            const int e = (int)((u >> 23) & 0xff) - 127 + 15;
            uint16_t s = (uint16_t)((u >> 16) & 0x8000);
            h[i] = (e <= 0) ? s : (e >= 31) ? (uint16_t)(s | 0x7bff) : (uint16_t)(s | (e << 10) | ((u >> 13) & 0x3ff));
        }
    } else if (raw) {
        for (size_t i = 0; i < rs * (size_t)nrows; i++) w[i] = (uint8_t)rnd();
        const size_t bb = type == EK_TYPE_Q8_0 ? 34 : type == EK_TYPE_Q4_K ? 144 : 210;
        for (size_t b = 0; b < rs * (size_t)nrows / bb; b++) { /* fp16 scales in +-[2^-8, 2^2) */
            uint8_t *blk = w + b * bb;
            const uint16_t d = (uint16_t)((rnd() & 0x83ff) | ((7 + rnd() % 10) << 10));
            const uint16_t dmin = (uint16_t)((rnd() & 0x83ff) | ((7 + rnd() % 10) << 10));
            if (type == EK_TYPE_Q8_0) memcpy(blk, &d, 2);
            if (type == EK_TYPE_Q4_K) {
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &dmin, 2);
            }
            if (type == EK_TYPE_Q6_K) memcpy(blk + 208, &d, 2);
        }
    } else if (ek_quantize(type, src, w, nrows, ncols, NULL, 1) != rs * (size_t)nrows) {
        fprintf(stderr, "ek_quantize failed\n");
        exit(2);
    }
    free(src);
    return w;
}

static const char *type_name(int t) {
    return t == EK_TYPE_F32 ? "F32" : t == EK_TYPE_F16 ? "F16" : t == EK_TYPE_Q8_0 ? "Q8_0" : t == EK_TYPE_Q4_K ? "Q4_K" : "Q6_K";
}

static void check_case(int type, int64_t nrows, int64_t ncols, int64_t ntok, enum fill wf, enum fill xf, int raw,
                       const int *levels, int nlevels) {
    void *w = make_weights(type, nrows, ncols, wf, raw);
    float *x = malloc(sizeof(float) * (size_t)(ntok * ncols));
    fill(x, ntok * ncols, xf);
    float *ref = malloc(sizeof(float) * (size_t)(ntok * nrows));
    float *got = malloc(sizeof(float) * (size_t)(ntok * nrows));
    ek_set_kernel_level(EK_LEVEL_SCALAR);
    if (ek_matmul(type, w, nrows, ncols, x, ntok, ref, 1) != 0) {
        fprintf(stderr, "scalar matmul failed: %s\n", ek_last_error());
        exit(2);
    }
    float scale = 0.0f;
    for (int64_t i = 0; i < ntok * nrows; i++) scale = fmaxf(scale, fabsf(ref[i]));
    for (int l = 0; l < nlevels; l++) {
        for (int nth = 1; nth <= 3; nth += 2) {
            ek_set_kernel_level(levels[l]);
            memset(got, 0xff, sizeof(float) * (size_t)(ntok * nrows)); /* NaN: unwritten outputs fail */
            checks++;
            if (ek_matmul(type, w, nrows, ncols, x, ntok, got, nth) != 0) {
                printf("FAIL %s %s: %s\n", ek_level_name(levels[l]), type_name(type), ek_last_error());
                failures++;
                continue;
            }
            /* Levels differ from the reference only in the order of float sums. */
            const float tol = 1e-4f * scale;
            for (int64_t i = 0; i < ntok * nrows; i++) {
                if (!(fabsf(got[i] - ref[i]) <= tol)) {
                    printf("FAIL %s %s %s %lldx%lld tokens=%lld w=%s x=%s threads=%d: y[%lld]=%g, scalar %g\n",
                           ek_level_name(levels[l]), type_name(type), raw ? "raw" : "quantized", (long long)nrows,
                           (long long)ncols, (long long)ntok, fill_name[wf], fill_name[xf], nth, (long long)i,
                           (double)got[i], (double)ref[i]);
                    failures++;
                    break;
                }
            }
        }
    }
    free(w);
    free(x);
    free(ref);
    free(got);
}

int main(void) {
    const int picked = ek_kernel_level(); /* before any ek_set_kernel_level: the load-time choice */
    printf("features:");
    for (int b = 0; b < 32; b++) {
        const char *n = ek_cpu_feature_name(1u << b);
        if (n && (ek_cpu_features() & (1u << b))) printf(" %s", n);
    }
    printf("\nlevel: %s\n", ek_level_name(picked));
    const int types[] = {EK_TYPE_F32, EK_TYPE_F16, EK_TYPE_Q8_0, EK_TYPE_Q4_K, EK_TYPE_Q6_K};
    for (int i = 0; i < 5; i++) printf("kernel %s: %s\n", type_name(types[i]), ek_kernel_impl(types[i]));

    int levels[8], nlevels = 0;
    const int all[] = {EK_LEVEL_AVX2, EK_LEVEL_AVXVNNI, EK_LEVEL_AVX512VNNI, EK_LEVEL_NEON, EK_LEVEL_DOTPROD,
                       EK_LEVEL_I8MM};
    for (int i = 0; i < 6; i++) {
        if (ek_level_available(all[i]) && all[i] <= picked) levels[nlevels++] = all[i];
    }
    printf("testing:");
    for (int i = 0; i < nlevels; i++) printf(" %s", ek_level_name(levels[i]));
    printf(" (against scalar)\n");

    /* Bad input must fail cleanly. */
    float dummy[256] = {0};
    checks += 3;
    if (ek_matmul(2 /* Q4_0 */, dummy, 1, 32, dummy, 1, dummy, 1) == 0) failures++, printf("FAIL: Q4_0 accepted\n");
    if (ek_matmul(EK_TYPE_Q4_K, dummy, 1, 100, dummy, 1, dummy, 1) == 0) failures++, printf("FAIL: ncols 100 accepted\n");
    if (ek_matmul(EK_TYPE_Q8_0, NULL, 1, 32, dummy, 1, dummy, 1) == 0) failures++, printf("FAIL: NULL accepted\n");

    struct {
        int64_t nrows, ntok;
    } shapes[] = {{1, 1}, {7, 1}, {13, 3}, {33, 17}, {6, 4}, {5, 2}, {22, 40}};
    for (int t = 0; t < 5; t++) {
        const int type = types[t];
        const int64_t ncols = type == EK_TYPE_Q8_0 ? 96 : type >= EK_TYPE_Q4_K ? 512 : 37;
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            check_case(type, shapes[s].nrows, ncols, shapes[s].ntok, F_GAUSS, F_GAUSS, 0, levels, nlevels);
        }
        const enum fill edge[][2] = {{F_ZERO, F_GAUSS}, {F_GAUSS, F_ZERO}, {F_HUGE, F_HUGE}, {F_EQUAL, F_NEG_EQUAL},
                                     {F_OUTLIER, F_GAUSS}, {F_GAUSS, F_OUTLIER}, {F_TINY, F_GAUSS}};
        for (size_t e = 0; e < sizeof edge / sizeof edge[0]; e++) {
            check_case(type, 9, ncols, 9, edge[e][0], edge[e][1], 0, levels, nlevels);
        }
        if (type >= EK_TYPE_Q8_0) {
            check_case(type, 11, ncols, 1, F_GAUSS, F_GAUSS, 1, levels, nlevels);
            check_case(type, 11, ncols, 10, F_GAUSS, F_HUGE, 1, levels, nlevels);
        }
    }
    printf("%s: %d checks, %d failures\n", failures ? "FAILED" : "OK", checks, failures);
    return failures ? 1 : 0;
}
