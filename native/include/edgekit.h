/* libedgekit: quantizers and matmul kernels for ggml's block formats.
 * Plain C11 API; no Python headers. Type ids use ggml/GGUF numbering. */
#ifndef EDGEKIT_H
#define EDGEKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ek_type {
    EK_TYPE_F32 = 0,
    EK_TYPE_F16 = 1,
    EK_TYPE_Q8_0 = 8,
    EK_TYPE_Q4_K = 12,
    EK_TYPE_Q6_K = 14,
    EK_TYPE_Q8_K = 15, /* activations only: 256 values, float d, int8 qs[256], int16 bsums[16] */
};

/* Library version string, e.g. "0.1.0". */
const char *ek_version(void);

/* Bytes one row of n_per_row values takes in `type` (F32, F16, Q8_0, Q4_K, Q6_K, Q8_K); 0 if the
 * type is unsupported or n_per_row is not a positive multiple of its block size. */
size_t ek_row_size(int type, int64_t n_per_row);

/* Quantize nrows rows of n_per_row float32 values into dst (ek_row_size * nrows bytes).
 * imatrix: NULL, or n_per_row non-negative importance weights (per column) that steer the
 * scale search. nthreads <= 0 uses all online CPUs. Returns bytes written, 0 on error. */
size_t ek_quantize(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                   const float *imatrix, int nthreads);

/* ---- CPU features and kernel levels -------------------------------------------------------
 * Every kernel exists as a portable scalar reference and, where the CPU allows, in SIMD levels.
 * The best level the CPU (and OS) supports is picked once, at the first call into the kernels.
 * EDGEKIT_CPU_LEVEL=<name> (read at that moment) forces a lower level; asking for a level the
 * CPU lacks prints a warning to stderr and clamps to the best available level below it. */

enum ek_cpu_feature { /* bits of ek_cpu_features() */
    EK_CPU_SSE3 = 1u << 0,
    EK_CPU_SSSE3 = 1u << 1,
    EK_CPU_AVX = 1u << 2,
    EK_CPU_AVX2 = 1u << 3,
    EK_CPU_FMA = 1u << 4,
    EK_CPU_F16C = 1u << 5,
    EK_CPU_AVX512F = 1u << 6,
    EK_CPU_AVX512BW = 1u << 7,
    EK_CPU_AVX512VL = 1u << 8,
    EK_CPU_AVX512VNNI = 1u << 9,
    EK_CPU_AVXVNNI = 1u << 10,
    EK_CPU_OS_YMM = 1u << 11, /* the OS saves YMM state (XCR0) */
    EK_CPU_OS_ZMM = 1u << 12, /* the OS saves opmask and ZMM state (XCR0) */
    EK_CPU_NEON = 1u << 16,
    EK_CPU_FP16 = 1u << 17, /* ARM: half-precision conversions (armv7 VFPv4/fp16; always on aarch64) */
    EK_CPU_DOTPROD = 1u << 18,
    EK_CPU_I8MM = 1u << 19,
};

enum ek_level { /* ranks: a higher level implies the ones below it on the same architecture */
    EK_LEVEL_SCALAR = 0,
    EK_LEVEL_AVX2 = 10,       /* AVX2 + FMA + F16C */
    EK_LEVEL_AVXVNNI = 11,    /* + AVX-VNNI (256-bit VEX vpdpbusd) */
    EK_LEVEL_AVX512VNNI = 12, /* + AVX-512 F/BW/VL/VNNI, OS saves ZMM state */
    EK_LEVEL_NEON = 20,       /* aarch64 armv8-a, or armv7 NEON + VFPv4 (32-bit) */
    EK_LEVEL_DOTPROD = 21,    /* armv8.2-a sdot */
    EK_LEVEL_I8MM = 22,       /* armv8.6-a smmla */
};

/* Features found on this CPU (enum ek_cpu_feature bits). */
uint32_t ek_cpu_features(void);
/* Name of one feature bit ("avx2", "dotprod", ...); NULL for an unknown bit. */
const char *ek_cpu_feature_name(uint32_t bit);

/* The level in use (enum ek_level). Picks it on first use. */
int ek_kernel_level(void);
/* "scalar", "avx2", "avxvnni", "avx512vnni", "neon", "dotprod", "i8mm"; NULL if unknown. */
const char *ek_level_name(int level);
/* Level for a name, or -1. */
int ek_level_from_name(const char *name);
/* 1 if this build has the level and this CPU can run it, else 0. */
int ek_level_available(int level);
/* Switch the level in use (for tests and benchmarks; do not call while a matmul runs).
 * Returns 0, or -1 (and sets ek_last_error) if the level is unavailable. */
int ek_set_kernel_level(int level);
/* Which implementation runs weights of `type` at the current level (a level name: some types
 * reuse a lower level's code, e.g. F32 at i8mm runs the neon kernels); NULL if unsupported. */
const char *ek_kernel_impl(int type);

/* ---- matmul --------------------------------------------------------------------------------
 * Y = X @ W^T with W as ggml stores a 2-D weight: nrows rows of ncols values, each row a run of
 * blocks of `type`; X: ntokens rows of ncols float32; Y: ntokens rows of nrows float32
 * (y[t*nrows + r] = dot(W row r, X row t)).
 * Activations are quantized first, as ggml does: to Q8_0 blocks for Q8_0 weights and to Q8_K
 * for Q4_K / Q6_K; F16 and F32 weights meet float32 activations (F16 widened exactly).
 * nthreads <= 0 uses every online CPU; threads come from a persistent pool created on first
 * use. Rows split over threads, so results do not depend on the thread count. y must not
 * overlap w or x.
 * Functions returning int give 0 on success, a negative value on bad input (message in
 * ek_last_error). */

/* Type activations are quantized to for weights of `type` (EK_TYPE_Q8_0, EK_TYPE_Q8_K or
 * EK_TYPE_F32); -1 if the type has no kernels. */
int ek_vec_type(int type);

/* Quantize ntokens rows of ncols float32 activations to ek_vec_type(type) rows in dst
 * (ek_row_size(ek_vec_type(type), ncols) bytes each), byte for byte as ggml's CPU backend does
 * (Q8_0: d = max|x|/127, round half to even; Q8_K: the largest magnitude maps to -127), so
 * values stay in -127..127. Returns bytes written, 0 on error. */
size_t ek_quantize_activations(int type, const float *x, void *dst, int64_t ntokens, int64_t ncols);

/* Y = X @ W^T from float activations (quantized internally into a temporary buffer). */
int ek_matmul(int type, const void *w, int64_t nrows, int64_t ncols, const float *x, int64_t ntokens, float *y,
              int nthreads);

/* The same from activations already in ek_vec_type(type) rows (ek_quantize_activations), e.g. one
 * input shared by several projections. Hand-made Q8_0 activations must avoid -128. */
int ek_matmul_q(int type, const void *w, int64_t nrows, int64_t ncols, const void *xq, int64_t ntokens, float *y,
                int nthreads);

/* Message for the last failed call on this thread ("" if none). */
const char *ek_last_error(void);

#ifdef __cplusplus
}
#endif
#endif
