/* Q5_0 and Q5_1 quantizers, byte-identical to ggml (quantize_row_q5_{0,1}_ref without an importance
 * matrix, quantize_row_q5_{0,1}_impl with one). llama.cpp uses them where a Q4_K / Q5_K row length
 * is not a multiple of 256 (e.g. Qwen2.5-0.5B's 896 columns), so they must honour the imatrix.
 *
 * Block of 32: an fp16 scale d (Q5_1 also an fp16 offset m), 4 bytes of high bits (bit j = the
 * fifth bit of value j), 16 bytes of low nibbles (byte j: value j low, value j+16 high).
 * Sums are float32 in index order with ggml's operand order: reordering breaks byte identity. */
#include <float.h>
#include <math.h>

#include "common.h"

#define QK5 32

/* Levels 0..31 into the nibble and high-bit arrays. */
static void pack5(const uint8_t *L, uint8_t qs[QK5 / 2], uint8_t qh_out[4]) {
    uint32_t qh = 0;
    for (int j = 0; j < QK5 / 2; j++) {
        const uint8_t a = L[j], b = L[j + QK5 / 2];
        qs[j] = (uint8_t)((a & 0x0F) | ((b & 0x0F) << 4));
        qh |= (uint32_t)((a & 0x10u) >> 4) << j;
        qh |= (uint32_t)((b & 0x10u) >> 4) << (j + QK5 / 2);
    }
    memcpy(qh_out, &qh, sizeof qh); /* little-endian, as ggml stores it */
}

/* Levels of one symmetric block with scale 1/iscale: l in -16..15 (returned shifted to 0..31). */
static inline int sym_level(float iscale, float x) {
    return ek_imax(-16, ek_imin(15, ek_nearest_int(iscale * x)));
}

/* Weighted fit of x ~= scale * l, l in -16..15: the grid anchored at the largest magnitude, then
 * 18 nearby inverse scales, keeping the one whose least-squares scale explains the most weighted
 * energy (ggml's make_qx_quants with nmax 16, rmse_type 1 and weights). */
static float fit_symmetric(const float *x, const float *w, uint8_t *L) {
    float amax = 0, max = 0;
    for (int i = 0; i < QK5; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < 1e-15f) {
        memset(L, 0, QK5);
        return 0.0f;
    }
    float iscale = -16 / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < QK5; i++) {
        const int l = sym_level(iscale, x[i]);
        L[i] = (uint8_t)(l + 16);
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(16 + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < QK5; i++) {
            const int l = sym_level(iscale, x[i]);
            sumlx += w[i] * x[i] * l;
            suml2 += w[i] * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < QK5; i++) L[i] = (uint8_t)(sym_level(iscale, x[i]) + 16);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Per-value weights qw_i * sqrt(sigma2 + x_i^2), sigma2 the mean square of the whole row. */
static float row_sigma2(const float *x, int64_t n) {
    float sum_x2 = 0;
    for (int64_t j = 0; j < n; j++) sum_x2 += x[j] * x[j];
    return sum_x2 / n;
}

void ek_quantize_row_q5_0(const float *x, void *dst, int64_t n_per_row, const float *imatrix) {
    ek_block_q5_0 *out = (ek_block_q5_0 *)dst;
    const int64_t nb = n_per_row / QK5;
    const float sigma2 = imatrix ? row_sigma2(x, n_per_row) : 0.0f;
    uint8_t L[QK5];
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK5;
        if (imatrix) {
            float w[QK5];
            for (int j = 0; j < QK5; j++) w[j] = imatrix[b * QK5 + j] * sqrtf(sigma2 + xb[j] * xb[j]);
            out[b].d = ek_fp32_to_fp16(fit_symmetric(xb, w, L));
        } else {
            /* d = -max/16 from the signed largest magnitude; +16.5 then truncation rounds. */
            float amax = 0, max = 0;
            for (int j = 0; j < QK5; j++) {
                if (amax < fabsf(xb[j])) {
                    amax = fabsf(xb[j]);
                    max = xb[j];
                }
            }
            const float d = max / -16;
            const float id = d ? 1.0f / d : 0.0f;
            out[b].d = ek_fp32_to_fp16(d);
            for (int j = 0; j < QK5; j++) {
                const int8_t l = (int8_t)(xb[j] * id + 16.5f);
                L[j] = (uint8_t)(l < 31 ? l : 31);
            }
        }
        pack5(L, out[b].qs, out[b].qh);
    }
}

void ek_quantize_row_q5_1(const float *x, void *dst, int64_t n_per_row, const float *imatrix) {
    ek_block_q5_1 *out = (ek_block_q5_1 *)dst;
    const int64_t nb = n_per_row / QK5;
    const float sigma2 = imatrix ? row_sigma2(x, n_per_row) : 0.0f;
    uint8_t L[QK5];
    if (imatrix) {
        /* ggml's make_qkx3_quants (nmax 31, the same grid as Q4_K's imatrix path) for 8 blocks at
         * a time, each block one lane of the shared search; unused lanes of the last group are
         * zero-filled and their results dropped. */
        for (int64_t b0 = 0; b0 < nb; b0 += EK_FIT_LANES) {
            float xt[QK5][EK_FIT_LANES] = {{0}}, wt[QK5][EK_FIT_LANES] = {{0}};
            float scale[EK_FIT_LANES], neg_min[EK_FIT_LANES];
            int32_t Lt[QK5][EK_FIT_LANES];
            const int nl = (int)(nb - b0 < EK_FIT_LANES ? nb - b0 : EK_FIT_LANES);
            for (int i = 0; i < QK5; i++) {
                for (int k = 0; k < nl; k++) {
                    const float v = x[(b0 + k) * QK5 + i];
                    xt[i][k] = v;
                    wt[i][k] = imatrix[(b0 + k) * QK5 + i] * sqrtf(sigma2 + v * v);
                }
            }
            ek_fit_scale_min((const float(*)[EK_FIT_LANES])xt, (const float(*)[EK_FIT_LANES])wt, 31, -0.9f,
                             0.05f, 36, Lt, scale, neg_min);
            for (int k = 0; k < nl; k++) {
                for (int i = 0; i < QK5; i++) L[i] = (uint8_t)Lt[i][k];
                out[b0 + k].d = ek_fp32_to_fp16(scale[k]);
                out[b0 + k].m = ek_fp32_to_fp16(-neg_min[k]);
                pack5(L, out[b0 + k].qs, out[b0 + k].qh);
            }
        }
        return;
    }
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK5;
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK5; j++) {
            if (xb[j] < min) min = xb[j];
            if (xb[j] > max) max = xb[j];
        }
        const float d = (max - min) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        out[b].d = ek_fp32_to_fp16(d);
        out[b].m = ek_fp32_to_fp16(min);
        for (int j = 0; j < QK5; j++) L[j] = (uint8_t)((xb[j] - min) * id + 0.5f);
        pack5(L, out[b].qs, out[b].qh);
    }
}
