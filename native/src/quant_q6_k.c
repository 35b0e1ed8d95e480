/* Q6_K quantizer, byte-identical to ggml (quantize_row_q6_K_ref without an importance matrix,
 * quantize_row_q6_K_impl with one; the two differ only in the weights of the scale search).
 * Sums are float32 in index order with ggml's operand order, so rounding matches exactly. */
#include <math.h>

#include "common.h"

#define SUB 16                /* values per sub-block */
#define NSUB (EK_QK_K / SUB)  /* sub-blocks per super-block */
#define NMAX 32               /* levels -32..31 */

/* Symmetric fit x[i] ~= scale * (L[i] - NMAX), L in 0..2*NMAX-1, for each of the 16 sub-blocks,
 * maximising the weighted projection sumlx^2/suml2 over 19 trial inverse scales around
 * NMAX/max|x|. Weights are the importance matrix, or x^2 without one. The scale is signed: it
 * carries the sign of the value with the largest magnitude so that value lands on the -32 end.
 * Mirrors ggml's make_qx_quants with rmse_type 1.
 *
 * The sub-blocks run side by side as lanes (xt[i][j] is value i of sub-block j): each lane does
 * exactly the scalar algorithm's operations in the same order, so the bytes match ggml, while
 * the compiler can vectorize across lanes. Levels are int32 so that all lanes have one width. */
/* Per lane: levels at inverse scale iscale, and the weighted sums sum(w*x*l) and sum(w*l*l). */
static inline void weighted_sums(const float xt[SUB][NSUB], const float wt[SUB][NSUB], const float iscale[NSUB],
                                 float sumlx[NSUB], float suml2[NSUB]) {
    for (int j = 0; j < NSUB; j++) sumlx[j] = suml2[j] = 0;
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            const int l = ek_imax(-NMAX, ek_imin(NMAX - 1, ek_nearest_int(iscale[j] * xt[i][j])));
            sumlx[j] += wt[i][j] * xt[i][j] * l;
            suml2[j] += wt[i][j] * l * l;
        }
    }
}

static void fit_symmetric(const float xt[SUB][NSUB], const float wt[SUB][NSUB], int32_t Lt[SUB][NSUB],
                          float scale_out[NSUB]) {
    float amax[NSUB], max[NSUB], iscale[NSUB], sumlx[NSUB], suml2[NSUB], scale[NSUB], best[NSUB];
    float best_iscale[NSUB]; /* levels are a function of the inverse scale: recomputed at the end */

    for (int j = 0; j < NSUB; j++) amax[j] = max[j] = 0;
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            const float ax = fabsf(xt[i][j]);
            const int bigger = ax > amax[j];
            amax[j] = bigger ? ax : amax[j];
            max[j] = bigger ? xt[i][j] : max[j];
        }
    }

    /* Lanes that are all zeros (amax < 1e-15) compute inf/NaN below and are reset at the end. */
    for (int j = 0; j < NSUB; j++) iscale[j] = -NMAX / max[j];
    weighted_sums(xt, wt, iscale, sumlx, suml2);
    for (int j = 0; j < NSUB; j++) {
        scale[j] = suml2[j] ? sumlx[j] / suml2[j] : 0.0f;
        best[j] = scale[j] * sumlx[j];
        best_iscale[j] = iscale[j];
    }
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        for (int j = 0; j < NSUB; j++) iscale[j] = -(NMAX + 0.1f * k) / max[j];
        weighted_sums(xt, wt, iscale, sumlx, suml2);
        for (int j = 0; j < NSUB; j++) {
            if (suml2[j] > 0 && sumlx[j] * sumlx[j] > best[j] * suml2[j]) {
                scale[j] = sumlx[j] / suml2[j];
                best[j] = scale[j] * sumlx[j];
                best_iscale[j] = iscale[j];
            }
        }
    }
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            const int l = ek_imax(-NMAX, ek_imin(NMAX - 1, ek_nearest_int(best_iscale[j] * xt[i][j])));
            Lt[i][j] = amax[j] < 1e-15f ? 0 : l + NMAX;
        }
    }
    for (int j = 0; j < NSUB; j++) scale_out[j] = amax[j] < 1e-15f ? 0.0f : scale[j];
}

static void quantize_block(const float *x, const float *qw, ek_block_q6_k *blk) {
    uint8_t L[EK_QK_K];
    int32_t Lt[SUB][NSUB];
    float xt[SUB][NSUB], wt[SUB][NSUB], scales[NSUB];
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            const float v = x[SUB * j + i];
            xt[i][j] = v;
            wt[i][j] = qw ? qw[SUB * j + i] : v * v;
        }
    }
    fit_symmetric((const float(*)[NSUB])xt, (const float(*)[NSUB])wt, Lt, scales);
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) L[SUB * j + i] = (uint8_t)Lt[i][j];
    }

    float max_scale = 0, max_abs_scale = 0;
    for (int j = 0; j < NSUB; j++) {
        const float a = fabsf(scales[j]);
        if (a > max_abs_scale) {
            max_abs_scale = a;
            max_scale = scales[j];
        }
    }
    if (max_abs_scale < 1e-15f) {
        memset(blk, 0, sizeof *blk); /* all-zero block; d = +0 */
        return;
    }

    /* 8-bit sub-block scales against d = max_scale / -128 (the largest lands on -128). */
    const float iscale = -128.0f / max_scale;
    blk->d = ek_fp32_to_fp16(1 / iscale);
    for (int j = 0; j < NSUB; j++) {
        blk->scales[j] = (int8_t)ek_imin(127, ek_nearest_int(iscale * scales[j]));
    }

    /* Final levels against what will actually be decoded: fp16 d times the 8-bit scale.
     * Sub-blocks whose scale rounded to zero keep the search's levels, as in ggml. */
    const float d_all = ek_fp16_to_fp32(blk->d);
    for (int j = 0; j < NSUB; j++) {
        const float d = d_all * blk->scales[j];
        if (d == 0.0f) continue;
        for (int i = 0; i < SUB; i++) {
            const int l = ek_nearest_int(x[SUB * j + i] / d);
            L[SUB * j + i] = (uint8_t)(ek_imax(-32, ek_imin(31, l)) + 32);
        }
    }

    /* Per 128-value half: ql byte i (i < 32) holds the low nibbles of values i and i+64, byte
     * 32+i those of values 32+i and 96+i; qh byte i holds bits 4-5 of values i, i+32, i+64 and
     * i+96, two bits each. */
    uint8_t *ql = blk->ql, *qh = blk->qh;
    for (int c = 0; c < EK_QK_K; c += 128, ql += 64, qh += 32) {
        for (int i = 0; i < 32; i++) {
            const uint8_t a = L[c + i], b = L[c + i + 32], e = L[c + i + 64], f = L[c + i + 96];
            ql[i] = (uint8_t)((a & 0xF) | ((e & 0xF) << 4));
            ql[i + 32] = (uint8_t)((b & 0xF) | ((f & 0xF) << 4));
            qh[i] = (uint8_t)((a >> 4) | ((b >> 4) << 2) | ((e >> 4) << 4) | ((f >> 4) << 6));
        }
    }
}

void ek_quantize_row_q6_k(const float *x, void *dst, int64_t n_per_row, const float *imatrix) {
    ek_block_q6_k *out = (ek_block_q6_k *)dst;
    const int64_t nblocks = n_per_row / EK_QK_K;
    for (int64_t b = 0; b < nblocks; b++) {
        quantize_block(x + b * EK_QK_K, imatrix ? imatrix + b * EK_QK_K : NULL, &out[b]);
    }
}
