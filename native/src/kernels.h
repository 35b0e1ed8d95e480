/* Internals of the matmul kernels: the Q8_K activation block, the per-level kernel table (one
 * entry per weight type, in the spirit of ggml's CPU type traits) and the activation quantizers.
 *
 * The activation quantizers are static inline on purpose: every level's file compiles its own
 * copy with its own flags, and all copies give the same bytes (max, one division, multiplies and
 * round-to-nearest-even are exact IEEE operations whatever the vector width), so the levels
 * only differ in the order of float sums in the dot products. */
#ifndef EDGEKIT_KERNELS_H
#define EDGEKIT_KERNELS_H

#include <math.h>

#include "common.h"
#include "edgekit.h"

/* ggml's block_q8_K: activations for the K-quants. bsums[j] = sum of qs[16j .. 16j+15], which
 * turns Q4_K's mins and Q6_K's -32 offset into 16 multiplies per block. */
typedef struct {
    float d;
    int8_t qs[EK_QK_K];
    int16_t bsums[EK_QK_K / 16];
} ek_block_q8_k;
_Static_assert(sizeof(ek_block_q8_k) == 292, "block_q8_K must be 292 bytes");

/* Quantize n activations (a multiple of the block size) into blocks. */
typedef void (*ek_act_fn)(const float *x, void *y, int64_t n);
/* s = dot(one weight row of n values, one activation row). */
typedef void (*ek_dot_fn)(int64_t n, const void *w, const void *x, float *s);
/* A register tile: mr weight rows (w, ws bytes apart) times nc activation rows (x, xs bytes
 * apart) into y[c*ys + r]. Weight blocks are decoded once per tile and used nc times. */
typedef void (*ek_tile_fn)(int64_t n, const void *w, size_t ws, const void *x, size_t xs, float *y, size_t ys);

/* vr weight rows (w, ws bytes apart) against one activation row: y[0 .. vr-1]. Optional, for
 * GEMV where several row streams at once pay (float weights). */
typedef void (*ek_dotr_fn)(int64_t n, const void *w, size_t ws, const void *x, float *y);

/* Packed GEMM (optional): activations of `gnc` tokens are first rearranged once per call (pack:
 * gbytes(n) bytes per token group, 64-byte aligned), then gemm runs nrows weight rows against one
 * packed group into y[t*ys + r]. For kernels whose inner loop broadcasts 4 weight bytes against
 * one vector holding 4 bytes of each of gnc tokens (outer-product form, no horizontal sums). */
typedef size_t (*ek_gbytes_fn)(int64_t n);
typedef void (*ek_pack_fn)(int64_t n, const void *x, size_t xs, void *dst);
typedef void (*ek_gemm_fn)(int64_t n, const void *w, size_t ws, int64_t nrows, const void *xp, float *y, size_t ys);

typedef struct {
    const char *impl; /* level whose code this is */
    ek_dot_fn dot;
    ek_tile_fn tile; /* NULL: the driver loops over dot */
    int mr, nc;      /* tile shape */
    ek_dotr_fn dotr; /* optional: vr rows x 1 token */
    int vr;
    ek_gbytes_fn gbytes; /* optional packed GEMM, for groups of gnc tokens */
    ek_pack_fn pack;
    ek_gemm_fn gemm;
    int gnc;
} ek_type_kernels;

typedef struct {
    const char *name;
    int level;
    ek_type_kernels f32, f16, q8_0, q4_k, q6_k;
    ek_act_fn act_q8_0, act_q8_k; /* the inline quantizers below, compiled with this level's flags */
    ek_type_kernels bf16, q5_0, q5_1; /* a level without them (dot NULL) runs the scalar ones */
} ek_kernel_set;

extern const ek_kernel_set ek_kernels_scalar;
#if defined(EK_HAVE_X86)
extern const ek_kernel_set ek_kernels_avx2, ek_kernels_avxvnni, ek_kernels_avx512vnni;
#endif
#if defined(EK_HAVE_ARM)
extern const ek_kernel_set ek_kernels_neon;
#endif
#if defined(EK_HAVE_ARM64)
extern const ek_kernel_set ek_kernels_dotprod, ek_kernels_i8mm;
#endif

/* The kernel set in use (cpu.c), and the error message of this thread's last failed call. */
const ek_kernel_set *ek_kernels(void);
void ek_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Run fn on up to nth threads of matmul's persistent pool (ith in 0..nth-1). The pool may run
 * it on fewer threads (even just the caller, with nth = 1): split work through a shared counter. */
void ek_parallel(void (*fn)(void *arg, int ith, int nth), void *arg, int nth);

/* Round to nearest, ties to even, after clamping to [lo, hi] (|lo|, |hi| < 2^22; NaN -> lo):
 * adding and removing 1.5*2^23 rounds in the FPU's default mode, the same integer ek_nearest_int
 * gives, in plain float operations that vectorize. */
static inline int ek_round_clamp(float v, float lo, float hi) {
    v = v >= lo ? v : lo; /* written as compares (not fminf/fmaxf, which stay libm calls) */
    v = v <= hi ? v : hi;
    return (int)((v + 12582912.0f) - 12582912.0f);
}

/* max |x[i]| as float bits: for non-negative floats the bit patterns order like the values, so
 * an integer max (which vectorizes without -ffast-math, unlike a float one) finds it. */
static inline uint32_t ek_amax_bits(const float *x, int n) {
    uint32_t m = 0;
    for (int i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        u &= 0x7fffffffu;
        m = u > m ? u : m;
    }
    return m;
}

/* Q8_0 activations: d = max|x| / 127, q = round-to-nearest-even(x / d), so |q| <= 127 (the SIMD
 * Q8_0 dot products rely on that: they move the weight's sign onto the activation). */
static inline void ek_act_q8_0(const float *x, void *dst, int64_t n) {
    ek_block_q8_0 *y = (ek_block_q8_0 *)dst;
    for (int64_t b = 0; b < n / EK_QK8_0; b++, x += EK_QK8_0) {
        const uint32_t bits = ek_amax_bits(x, EK_QK8_0);
        float amax;
        memcpy(&amax, &bits, 4);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = ek_fp32_to_fp16(d);
        /* the clamp only matters when 1/d overflows (subnormal inputs) */
        for (int i = 0; i < EK_QK8_0; i++) y[b].qs[i] = (int8_t)ek_round_clamp(x[i] * id, -127.0f, 127.0f);
    }
}

/* Q8_1 activations (for Q5_1): Q8_0's rounding, plus s = d * (sum of the quantized values). */
static inline void ek_act_q8_1(const float *x, void *dst, int64_t n) {
    ek_block_q8_1 *y = (ek_block_q8_1 *)dst;
    for (int64_t b = 0; b < n / EK_QK8_0; b++, x += EK_QK8_0) {
        const uint32_t bits = ek_amax_bits(x, EK_QK8_0);
        float amax;
        memcpy(&amax, &bits, 4);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int i = 0; i < EK_QK8_0; i++) {
            y[b].qs[i] = (int8_t)ek_round_clamp(x[i] * id, -127.0f, 127.0f);
            sum += y[b].qs[i];
        }
        y[b].d = ek_fp32_to_fp16(d);
        y[b].s = ek_fp32_to_fp16((float)sum * d);
    }
}

/* BF16 activations (for BF16 weights, as ggml's vec_dot_type). */
static inline void ek_act_bf16(const float *x, void *dst, int64_t n) {
    uint16_t *y = (uint16_t *)dst;
    for (int64_t i = 0; i < n; i++) y[i] = ek_fp32_to_bf16(x[i]);
}

/* Q8_K activations, as ggml's quantize_row_q8_K_ref (which all ggml CPU backends use): the value
 * of largest magnitude maps to -127 (ggml moved from -128 so SIMD code can take |q|), d = 1/iscale
 * as a float; the clamp at 127 never triggers but keeps ggml's exact formula. */
static inline void ek_act_q8_k(const float *x, void *dst, int64_t n) {
    ek_block_q8_k *y = (ek_block_q8_k *)dst;
    for (int64_t b = 0; b < n / EK_QK_K; b++, x += EK_QK_K) {
        /* the first value of largest magnitude, with its sign */
        const uint32_t bits = ek_amax_bits(x, EK_QK_K);
        float amax, max = 0.0f;
        memcpy(&amax, &bits, 4);
        for (int i = 0; i < EK_QK_K; i++) {
            if (fabsf(x[i]) == amax) {
                max = x[i];
                break;
            }
        }
        if (amax == 0.0f) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const float iscale = -127.0f / max;
        /* ggml clamps at 127 only; -128 keeps NaN/overflow defined (|iscale*x| <= 127 otherwise) */
        for (int i = 0; i < EK_QK_K; i++) y[b].qs[i] = (int8_t)ek_round_clamp(iscale * x[i], -128.0f, 127.0f);
        for (int j = 0; j < EK_QK_K / 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += y[b].qs[16 * j + i];
            y[b].bsums[j] = (int16_t)sum;
        }
        y[b].d = 1.0f / iscale;
    }
}

/* Q4_K's 12 packed bytes -> 8 six-bit scales and 8 six-bit mins (layout: quant_q4_k.c). */
static inline void ek_unpack_q4_k_scales(const uint8_t *q, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & 63;
        m[j] = q[j + 4] & 63;
        sc[j + 4] = (uint8_t)((q[j + 8] & 0xF) | ((q[j] >> 6) << 4));
        m[j + 4] = (uint8_t)((q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4));
    }
}

#endif
