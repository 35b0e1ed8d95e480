/* Shared internals of libedgekit's quantizers: ggml's block layouts, fp16 helpers and the
 * integer rounding every quantizer uses. Not part of the public API. */
#ifndef EDGEKIT_COMMON_H
#define EDGEKIT_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define EK_QK8_0 32 /* values per Q8_0 block */
#define EK_QK_K 256 /* values per K-quant super-block */

/* Q8_0: one fp16 scale, 32 signed bytes; value = d * qs[i]. */
typedef struct {
    uint16_t d;
    int8_t qs[EK_QK8_0];
} ek_block_q8_0;

/* Q4_K: 8 sub-blocks of 32. Each sub-block has a 6-bit scale and a 6-bit min (packed into
 * 12 bytes), multiplied by the fp16 super-block d / dmin; value = d*sc*q - dmin*m with q a nibble.
 * Nibbles: byte l of each 32-byte group holds value l (low nibble) and value l+32 (high nibble)
 * of a 64-value chunk. */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[EK_QK_K / 2];
} ek_block_q4_k;

/* Q6_K: 16 sub-blocks of 16 with signed 8-bit scales times the fp16 d; value = d*sc*(q-32) with
 * q a 6-bit level split into a low nibble (ql) and two high bits (qh). */
typedef struct {
    uint8_t ql[EK_QK_K / 2];
    uint8_t qh[EK_QK_K / 4];
    int8_t scales[EK_QK_K / 16];
    uint16_t d;
} ek_block_q6_k;

/* Q5_0: 32 values of 5 bits: low nibbles in qs (value j and j+16 share byte j), fifth bits in qh
 * (bit j of the little-endian u32 for value j); value = d * (q - 16). */
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[EK_QK8_0 / 2];
} ek_block_q5_0;

/* Q5_1: as Q5_0 with an offset instead of the -16: value = d * q + m. */
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[EK_QK8_0 / 2];
} ek_block_q5_1;

/* Q8_1 (activations for Q5_1): Q8_0 plus s = d * sum(qs), which carries Q5_1's offset. */
typedef struct {
    uint16_t d, s;
    int8_t qs[EK_QK8_0];
} ek_block_q8_1;

_Static_assert(sizeof(ek_block_q5_0) == 22, "block_q5_0 must be 22 bytes");
_Static_assert(sizeof(ek_block_q5_1) == 24, "block_q5_1 must be 24 bytes");
_Static_assert(sizeof(ek_block_q8_1) == 36, "block_q8_1 must be 36 bytes");
_Static_assert(sizeof(ek_block_q8_0) == 34, "block_q8_0 must be 34 bytes");
_Static_assert(sizeof(ek_block_q4_k) == 144, "block_q4_K must be 144 bytes");
_Static_assert(sizeof(ek_block_q6_k) == 210, "block_q6_K must be 210 bytes");

/* IEEE binary16 conversions; fp32 -> fp16 rounds to nearest, ties to even (as ggml does). */
uint16_t ek_fp32_to_fp16(float f);
float ek_fp16_to_fp32(uint16_t h);

/* bfloat16: the top half of a binary32; fp32 -> bf16 rounds to nearest, ties to even (as ggml). */
static inline float ek_bf16_to_fp32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline uint16_t ek_fp32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); /* NaN stays quiet */
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

/* Round to the nearest integer, ties to even, for |f| < 2^22: adding 1.5*2^23 leaves the
 * rounded integer in the low mantissa bits. Out of that range the result is the same
 * well-defined bit pattern ggml gets (we do not clamp, so outputs stay byte-identical). */
static inline int ek_nearest_int(float f) {
    float biased = f + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &biased, sizeof bits);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int ek_imin(int a, int b) { return a < b ? a : b; }
static inline int ek_imax(int a, int b) { return a > b ? a : b; }

/* Row quantizers: one row of n_per_row floats into dst. imatrix is NULL or n_per_row weights. */
void ek_quantize_row_q8_0(const float *x, void *dst, int64_t n_per_row, const float *imatrix);
void ek_quantize_row_q4_k(const float *x, void *dst, int64_t n_per_row, const float *imatrix);
void ek_quantize_row_q6_k(const float *x, void *dst, int64_t n_per_row, const float *imatrix);
void ek_quantize_row_q5_0(const float *x, void *dst, int64_t n_per_row, const float *imatrix);
void ek_quantize_row_q5_1(const float *x, void *dst, int64_t n_per_row, const float *imatrix);

/* ggml's weighted scale + offset search (make_qkx3_quants) over EK_FIT_LANES independent groups of
 * 32 values side by side: xt[i][j] is value i of group j. Levels 0..nmax; x ~= scale*L - neg_min.
 * Shared by Q4_K (its 8 sub-blocks) and Q5_1 (8 blocks at a time). In quant_q4_k.c. */
#define EK_FIT_LANES 8
void ek_fit_scale_min(const float xt[32][EK_FIT_LANES], const float wt[32][EK_FIT_LANES], int nmax, float rmin,
                      float rdelta, int nstep, int32_t Lt[32][EK_FIT_LANES], float scale_out[EK_FIT_LANES],
                      float neg_min_out[EK_FIT_LANES]);

#endif
