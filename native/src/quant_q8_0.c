/* Q8_0: per 32 values, d = max|x| / 127 and q = round(x / d), half away from zero.
 * Byte-identical to ggml's quantize_row_q8_0_ref; the importance matrix has nothing to steer. */
#include <math.h>

#include "common.h"

/* roundf() (half away from zero) without a libm call per value, so the loop vectorizes: here
 * |v| <= 127, so the truncation and the difference below are exact. */
static inline int8_t round_half_away(float v) {
    int i = (int)v; /* truncates toward zero */
    const float frac = v - (float)i;
    i += (frac >= 0.5f) - (frac <= -0.5f);
    return (int8_t)i;
}

void ek_quantize_row_q8_0(const float *x, void *dst, int64_t n_per_row, const float *imatrix) {
    (void)imatrix;
    ek_block_q8_0 *out = (ek_block_q8_0 *)dst;
    const int64_t nblocks = n_per_row / EK_QK8_0;

    for (int64_t b = 0; b < nblocks; b++, x += EK_QK8_0) {
        float amax = 0.0f;
        for (int i = 0; i < EK_QK8_0; i++) {
            const float a = fabsf(x[i]);
            amax = amax > a ? amax : a;
        }
        /* ggml divides by 127 (not multiplies by 1/127) and scales by the unrounded d; the fp16
         * rounding only affects the stored scale. */
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = ek_fp32_to_fp16(d);
        for (int i = 0; i < EK_QK8_0; i++) {
            out[b].qs[i] = round_half_away(x[i] * id);
        }
    }
}
