/* Portable scalar kernels: the reference every SIMD level is tested against, and the fallback on
 * CPUs without one. Integer sums are exact; per block the float math is the one ggml's generic
 * code does (scale products times the integer dot), accumulated in block order. */
#include "kernels.h"

static void dot_f32(int64_t n, const void *w, const void *x, float *s) {
    const float *a = (const float *)w, *b = (const float *)x;
    double sum = 0.0; /* the reference should not lose digits on long rows */
    for (int64_t i = 0; i < n; i++) sum += (double)a[i] * b[i];
    *s = (float)sum;
}

static void dot_f16(int64_t n, const void *w, const void *x, float *s) {
    const uint16_t *a = (const uint16_t *)w;
    const float *b = (const float *)x;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)ek_fp16_to_fp32(a[i]) * b[i];
    *s = (float)sum;
}

static void dot_q8_0(int64_t n, const void *w, const void *x, float *s) {
    const ek_block_q8_0 *a = (const ek_block_q8_0 *)w, *b = (const ek_block_q8_0 *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / EK_QK8_0; i++) {
        int isum = 0;
        for (int k = 0; k < EK_QK8_0; k++) isum += a[i].qs[k] * b[i].qs[k];
        sum += (float)isum * (ek_fp16_to_fp32(a[i].d) * ek_fp16_to_fp32(b[i].d));
    }
    *s = sum;
}

static void dot_q4_k(int64_t n, const void *w, const void *x, float *s) {
    const ek_block_q4_k *a = (const ek_block_q4_k *)w;
    const ek_block_q8_k *b = (const ek_block_q8_k *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / EK_QK_K; i++) {
        uint8_t sc[8], m[8];
        ek_unpack_q4_k_scales(a[i].scales, sc, m);
        int isum = 0, msum = 0;
        for (int c = 0; c < 4; c++) { /* 64 values: low nibbles then high nibbles of 32 bytes */
            const uint8_t *q = a[i].qs + 32 * c;
            const int8_t *y = b[i].qs + 64 * c;
            int lo = 0, hi = 0;
            for (int k = 0; k < 32; k++) {
                lo += (q[k] & 0xF) * y[k];
                hi += (q[k] >> 4) * y[k + 32];
            }
            isum += sc[2 * c] * lo + sc[2 * c + 1] * hi;
        }
        for (int j = 0; j < 8; j++) msum += m[j] * (b[i].bsums[2 * j] + b[i].bsums[2 * j + 1]);
        sum += b[i].d * ek_fp16_to_fp32(a[i].d) * (float)isum - b[i].d * ek_fp16_to_fp32(a[i].dmin) * (float)msum;
    }
    *s = sum;
}

static void dot_q6_k(int64_t n, const void *w, const void *x, float *s) {
    const ek_block_q6_k *a = (const ek_block_q6_k *)w;
    const ek_block_q8_k *b = (const ek_block_q8_k *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / EK_QK_K; i++) {
        int8_t q[EK_QK_K];
        const uint8_t *ql = a[i].ql, *qh = a[i].qh;
        for (int c = 0; c < EK_QK_K; c += 128, ql += 64, qh += 32) {
            for (int k = 0; k < 32; k++) {
                q[c + k] = (int8_t)(((ql[k] & 0xF) | ((qh[k] & 3) << 4)) - 32);
                q[c + k + 32] = (int8_t)(((ql[k + 32] & 0xF) | (((qh[k] >> 2) & 3) << 4)) - 32);
                q[c + k + 64] = (int8_t)(((ql[k] >> 4) | (((qh[k] >> 4) & 3) << 4)) - 32);
                q[c + k + 96] = (int8_t)(((ql[k + 32] >> 4) | (((qh[k] >> 6) & 3) << 4)) - 32);
            }
        }
        int isum = 0;
        for (int j = 0; j < EK_QK_K / 16; j++) {
            int d = 0;
            for (int k = 0; k < 16; k++) d += q[16 * j + k] * b[i].qs[16 * j + k];
            isum += a[i].scales[j] * d;
        }
        sum += b[i].d * ek_fp16_to_fp32(a[i].d) * (float)isum;
    }
    *s = sum;
}

static void dot_bf16(int64_t n, const void *w, const void *x, float *s) {
    const uint16_t *a = (const uint16_t *)w, *b = (const uint16_t *)x;
    double sum = 0.0; /* bf16 x bf16 products are exact in float */
    for (int64_t i = 0; i < n; i++) sum += (double)(ek_bf16_to_fp32(a[i]) * ek_bf16_to_fp32(b[i]));
    *s = (float)sum;
}

/* The 32 five-bit levels of a Q5_0/Q5_1 block (0..31). */
static void q5_levels(const uint8_t qh4[4], const uint8_t qs[16], int q[32]) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
        q[j + 16] = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
    }
}

static void dot_q5_0(int64_t n, const void *w, const void *x, float *s) {
    const ek_block_q5_0 *a = (const ek_block_q5_0 *)w;
    const ek_block_q8_0 *b = (const ek_block_q8_0 *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / EK_QK8_0; i++) {
        int q[32], isum = 0;
        q5_levels(a[i].qh, a[i].qs, q);
        for (int k = 0; k < 32; k++) isum += (q[k] - 16) * b[i].qs[k];
        sum += (float)isum * (ek_fp16_to_fp32(a[i].d) * ek_fp16_to_fp32(b[i].d));
    }
    *s = sum;
}

static void dot_q5_1(int64_t n, const void *w, const void *x, float *s) {
    const ek_block_q5_1 *a = (const ek_block_q5_1 *)w;
    const ek_block_q8_1 *b = (const ek_block_q8_1 *)x;
    float sum = 0.0f;
    for (int64_t i = 0; i < n / EK_QK8_0; i++) {
        int q[32], isum = 0;
        q5_levels(a[i].qh, a[i].qs, q);
        for (int k = 0; k < 32; k++) isum += q[k] * b[i].qs[k];
        sum += (float)isum * (ek_fp16_to_fp32(a[i].d) * ek_fp16_to_fp32(b[i].d)) +
               ek_fp16_to_fp32(a[i].m) * ek_fp16_to_fp32(b[i].s);
    }
    *s = sum;
}

static void act_q8_0(const float *x, void *y, int64_t n) { ek_act_q8_0(x, y, n); }
static void act_q8_k(const float *x, void *y, int64_t n) { ek_act_q8_k(x, y, n); }

const ek_kernel_set ek_kernels_scalar = {
    .name = "scalar",
    .level = EK_LEVEL_SCALAR,
    .f32 = {"scalar", dot_f32, NULL, 1, 1},
    .f16 = {"scalar", dot_f16, NULL, 1, 1},
    .q8_0 = {"scalar", dot_q8_0, NULL, 1, 1},
    .q4_k = {"scalar", dot_q4_k, NULL, 1, 1},
    .q6_k = {"scalar", dot_q6_k, NULL, 1, 1},
    .act_q8_0 = act_q8_0,
    .act_q8_k = act_q8_k,
    .bf16 = {"scalar", dot_bf16, NULL, 1, 1},
    .q5_0 = {"scalar", dot_q5_0, NULL, 1, 1},
    .q5_1 = {"scalar", dot_q5_1, NULL, 1, 1},
};
