/* Q4_K quantizer, byte-identical to ggml (quantize_row_q4_K_ref without an importance matrix,
 * quantize_row_q4_K_impl with one).
 *
 * Every sum below is a float32 accumulation in index order and every product keeps ggml's
 * operand order: reordering changes rounding, which flips a few levels and breaks identity. */
#include <math.h>

#include "common.h"

#define SUB 32                   /* values per sub-block */
#define NSUB (EK_QK_K / SUB)     /* sub-blocks per super-block */

/* The level of x on the grid that starts at `anchor` with step 1/iscale, clamped to 0..nmax. */
static inline int level(float iscale, float x, float anchor, int nmax) {
    return ek_imax(0, ek_imin(nmax, ek_nearest_int(iscale * (x - anchor))));
}

/* Fit x[i] ~= scale * L[i] - neg_min (L in 0..nmax, neg_min >= 0) for each of the 8 sub-blocks,
 * minimising the w-weighted squared error. Starts from the plain min/max grid, then tries
 * nstep+1 other inverse scales (nmax + rmin + rdelta*k over the range), solving the 2x2
 * least-squares problem for each candidate set of levels and keeping the best. Mirrors ggml's
 * make_qkx2_quants / make_qkx3_quants, which agree whenever weights are given (our only use).
 *
 * The sub-blocks are independent, so they run side by side as "lanes": xt[i][j] is value i of
 * sub-block j. Each lane performs exactly the scalar algorithm's operations in the same order
 * (every sum stays sequential in i), so the bytes match ggml; what changes is that 8 independent
 * dependency chains can overlap (and be vectorized) instead of one long chain of float adds. */
void ek_fit_scale_min(const float xt[SUB][NSUB], const float wt[SUB][NSUB], int nmax, float rmin,
                          float rdelta, int nstep, int32_t Lt[SUB][NSUB], float scale_out[NSUB],
                          float neg_min_out[NSUB]) {
    float lo[NSUB], hi[NSUB], sum_w[NSUB], sum_x[NSUB], scale[NSUB], best[NSUB], iscale[NSUB];
    float sum_l[NSUB], sum_l2[NSUB], sum_xl[NSUB], this_scale[NSUB], this_min[NSUB], err[NSUB];
    int32_t trial[SUB][NSUB]; /* int32, not uint8: mixed-width lanes defeat vectorization */
    /* The levels are a function of (inverse scale, anchor): remember the best pair and
     * recompute them once at the end instead of copying level arrays on every improvement. */
    float best_iscale[NSUB], best_anchor[NSUB];
    int live[NSUB];

    for (int j = 0; j < NSUB; j++) {
        lo[j] = hi[j] = xt[0][j];
        sum_w[j] = wt[0][j];
        sum_x[j] = sum_w[j] * xt[0][j];
    }
    for (int i = 1; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            lo[j] = xt[i][j] < lo[j] ? xt[i][j] : lo[j];
            hi[j] = xt[i][j] > hi[j] ? xt[i][j] : hi[j];
            sum_w[j] += wt[i][j];
            sum_x[j] += wt[i][j] * xt[i][j];
        }
    }
    for (int j = 0; j < NSUB; j++) {
        if (lo[j] > 0) lo[j] = 0; /* the offset only ever shifts values up */
        live[j] = !(hi[j] == lo[j]); /* a flat sub-block is all level 0 (handled at the end) */
        iscale[j] = (float)nmax / (hi[j] - lo[j]);
        scale[j] = 1.0f / iscale[j];
        best[j] = 0.0f;
        best_iscale[j] = iscale[j];
        best_anchor[j] = lo[j];
    }
    /* Dead lanes compute inf/NaN below; their results are never taken. */
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            const int l = level(iscale[j], xt[i][j], lo[j], nmax);
            const float diff = scale[j] * l + lo[j] - xt[i][j];
            best[j] += wt[i][j] * (diff * diff);
        }
    }

    for (int step = 0; step <= nstep; step++) {
        /* lo is each lane's best offset so far (not the data minimum): ggml re-anchors the grid. */
        for (int j = 0; j < NSUB; j++) {
            iscale[j] = (rmin + rdelta * step + nmax) / (hi[j] - lo[j]);
            sum_l[j] = sum_l2[j] = sum_xl[j] = 0.0f;
        }
        for (int i = 0; i < SUB; i++) {
            for (int j = 0; j < NSUB; j++) {
                const int l = level(iscale[j], xt[i][j], lo[j], nmax);
                trial[i][j] = l;
                sum_l[j] += wt[i][j] * l;
                sum_l2[j] += wt[i][j] * l * l;
                sum_xl[j] += wt[i][j] * l * xt[i][j];
            }
        }
        int ok[NSUB];
        for (int j = 0; j < NSUB; j++) {
            const float det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            ok[j] = live[j] && det > 0;
            this_scale[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
            this_min[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
            if (this_min[j] > 0) { /* a positive offset is not representable: refit the scale alone */
                this_min[j] = 0;
                this_scale[j] = sum_xl[j] / sum_l2[j];
            }
            err[j] = 0.0f;
        }
        for (int i = 0; i < SUB; i++) {
            for (int j = 0; j < NSUB; j++) {
                const float diff = this_scale[j] * trial[i][j] + this_min[j] - xt[i][j];
                err[j] += wt[i][j] * (diff * diff);
            }
        }
        for (int j = 0; j < NSUB; j++) {
            if (ok[j] && err[j] < best[j]) {
                best[j] = err[j];
                scale[j] = this_scale[j];
                best_iscale[j] = iscale[j];
                best_anchor[j] = lo[j];
                lo[j] = this_min[j];
            }
        }
    }
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            const int l = level(best_iscale[j], xt[i][j], best_anchor[j], nmax);
            Lt[i][j] = live[j] ? l : 0;
        }
    }
    for (int j = 0; j < NSUB; j++) {
        scale_out[j] = live[j] ? scale[j] : 0.0f;
        neg_min_out[j] = -lo[j];
    }
}

/* Quantize n non-negative values (the sub-block scales or mins) to 0..nmax against one float
 * factor, minimising the w-weighted error: a small grid over the factor, then up to five
 * passes of coordinate descent on the levels. Mirrors ggml's make_qp_quants. */
static float fit_levels_positive(int n, int nmax, const float *x, const float *w, uint8_t *L) {
    float max = 0;
    for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
    if (max < 1e-15f) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)ek_nearest_int(iscale * x[i]);
    const float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; i++) {
        const float diff = x[i] - scale * L[i];
        best_mse += w[i] * diff * diff;
    }
    for (int k = -4; k <= 4; k++) {
        if (k == 0) continue;
        const float iscale_k = (0.1f * k + nmax) / max;
        const float scale_k = 1 / iscale_k;
        float mse = 0;
        for (int i = 0; i < n; i++) {
            const int l = ek_imin(nmax, ek_nearest_int(iscale_k * x[i]));
            const float diff = x[i] - scale_k * l;
            mse += w[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_k;
        }
    }

    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = ek_imin(nmax, ek_nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    /* Coordinate descent: move one level to its best value given the others if that improves
     * the projected error (sumlx^2 / suml2 grows). */
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * L[i];
            float sl2 = suml2 - w[i] * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                const int new_l = ek_imin(nmax, ek_nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w[i] * x[i] * new_l;
                    sl2 += w[i] * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Lane layout (value i of sub-block j at [i][j]) back to value order. */
static void unlane(int32_t Lt[SUB][NSUB], uint8_t *L) {
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) L[SUB * j + i] = (uint8_t)Lt[i][j];
    }
}

/* Pack the 8 six-bit scales and mins: entries 0..3 sit in the low 6 bits of bytes 0..3 (scale)
 * and 4..7 (min); entries 4..7 put their low nibbles in bytes 8..11 and their top two bits in
 * the spare high bits of bytes 0..7. */
static void pack_scales_mins(const uint8_t *ls, const uint8_t *lm, uint8_t *out) {
    for (int j = 0; j < 4; j++) {
        out[j] = ls[j];
        out[j + 4] = lm[j];
    }
    for (int j = 4; j < NSUB; j++) {
        out[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
        out[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
        out[j] |= (uint8_t)((lm[j] >> 4) << 6);
    }
}

/* With the stored (fp16-rounded) d/dmin and 6-bit scales fixed, re-derive each level from the
 * values that will actually be decoded, then pack nibbles. Sub-blocks whose scale is zero keep
 * the levels of the search (ggml does the same). */
static void finish_block(const float *x, ek_block_q4_k *blk, const uint8_t *ls, const uint8_t *lm,
                         uint8_t *L) {
    const float d_all = ek_fp16_to_fp32(blk->d);
    const float m_all = ek_fp16_to_fp32(blk->dmin);
    for (int j = 0; j < NSUB; j++) {
        const float d = d_all * ls[j];
        if (d == 0.0f) continue;
        const float dm = m_all * lm[j];
        for (int i = 0; i < SUB; i++) {
            const int l = ek_nearest_int((x[SUB * j + i] + dm) / d);
            L[SUB * j + i] = (uint8_t)ek_imax(0, ek_imin(15, l));
        }
    }
    uint8_t *q = blk->qs;
    for (int c = 0; c < EK_QK_K; c += 64, q += 32) {
        for (int i = 0; i < 32; i++) q[i] = (uint8_t)(L[c + i] | (L[c + i + 32] << 4));
    }
}

/* No importance matrix: weights rms(sub-block) + |x_i|, scales/mins quantized linearly
 * against their maxima (ggml's quantize_row_q4_K_ref). */
static void block_plain(const float *x, ek_block_q4_k *blk) {
    uint8_t L[EK_QK_K], ls[NSUB], lm[NSUB];
    int32_t Lt[SUB][NSUB];
    float xt[SUB][NSUB], wt[SUB][NSUB], scales[NSUB], mins[NSUB], sum_x2[NSUB], av_x[NSUB];
    for (int j = 0; j < NSUB; j++) sum_x2[j] = 0;
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            xt[i][j] = x[SUB * j + i];
            sum_x2[j] += xt[i][j] * xt[i][j];
        }
    }
    for (int j = 0; j < NSUB; j++) av_x[j] = sqrtf(sum_x2[j] / SUB);
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) wt[i][j] = av_x[j] + fabsf(xt[i][j]);
    }
    ek_fit_scale_min((const float(*)[NSUB])xt, (const float(*)[NSUB])wt, 15, -1.0f, 0.1f, 20, Lt, scales, mins);
    unlane(Lt, L);

    float max_scale = 0, max_min = 0;
    for (int j = 0; j < NSUB; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    for (int j = 0; j < NSUB; j++) {
        /* the truncation to uint8 before the clamp is ggml's, kept for identity */
        const uint8_t s = (uint8_t)ek_nearest_int(inv_scale * scales[j]);
        const uint8_t m = (uint8_t)ek_nearest_int(inv_min * mins[j]);
        ls[j] = s < 63 ? s : 63;
        lm[j] = m < 63 ? m : 63;
    }
    pack_scales_mins(ls, lm, blk->scales);
    blk->d = ek_fp32_to_fp16(max_scale / 63.0f);
    blk->dmin = ek_fp32_to_fp16(max_min / 63.0f);
    finish_block(x, blk, ls, lm, L);
}

/* With importance weights qw: per-value weight qw_i * sqrt(sigma2 + x_i^2), a finer scale
 * search, and the 6-bit scales/mins themselves fitted under the sub-block weight sums
 * (ggml's quantize_row_q4_K_impl). */
static void block_weighted(const float *x, const float *qw, ek_block_q4_k *blk) {
    uint8_t L[EK_QK_K], ls[NSUB], lm[NSUB];
    int32_t Lt[SUB][NSUB];
    float xt[SUB][NSUB], wt[SUB][NSUB], sw[NSUB], scales[NSUB], mins[NSUB];
    float sum_x2 = 0;
    for (int i = 0; i < EK_QK_K; i++) sum_x2 += x[i] * x[i];
    const float sigma2 = 2 * sum_x2 / EK_QK_K;
    for (int j = 0; j < NSUB; j++) sw[j] = 0;
    for (int i = 0; i < SUB; i++) {
        for (int j = 0; j < NSUB; j++) {
            const float v = x[SUB * j + i];
            xt[i][j] = v;
            wt[i][j] = qw[SUB * j + i] * sqrtf(sigma2 + v * v);
            sw[j] += wt[i][j];
        }
    }
    ek_fit_scale_min((const float(*)[NSUB])xt, (const float(*)[NSUB])wt, 15, -0.9f, 0.05f, 36, Lt, scales, mins);
    unlane(Lt, L);

    const float d_block = fit_levels_positive(NSUB, 63, scales, sw, ls);
    const float m_block = fit_levels_positive(NSUB, 63, mins, sw, lm);
    pack_scales_mins(ls, lm, blk->scales);
    blk->d = ek_fp32_to_fp16(d_block);
    blk->dmin = ek_fp32_to_fp16(m_block);
    finish_block(x, blk, ls, lm, L);
}

void ek_quantize_row_q4_k(const float *x, void *dst, int64_t n_per_row, const float *imatrix) {
    ek_block_q4_k *out = (ek_block_q4_k *)dst;
    const int64_t nblocks = n_per_row / EK_QK_K;
    for (int64_t b = 0; b < nblocks; b++) {
        if (imatrix) {
            block_weighted(x + b * EK_QK_K, imatrix + b * EK_QK_K, &out[b]);
        } else {
            block_plain(x + b * EK_QK_K, &out[b]);
        }
    }
}
