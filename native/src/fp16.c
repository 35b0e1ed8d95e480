/* IEEE binary16 <-> binary32, written with integer operations only so the result does not
 * depend on the compiler or on F16C/NEON being present. */
#include "common.h"

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t ek_fp32_to_fp16(float f) {
    const uint32_t u = bits_of(f);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t mag = u & 0x7fffffffu;

    if (mag > 0x7f800000u) return sign | 0x7e00u; /* NaN: one quiet NaN, sign kept (as ggml) */
    if (mag >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to infinity */

    if (mag < 0x38800000u) {
        /* Below 2^-14: a half subnormal (or zero) counts units of 2^-24. Scaling by 2^24 is
         * exact and leaves a value < 1024; adding 2^23 rounds it to an integer, ties to even.
         * 1024 itself is the bit pattern of the smallest normal half, so the carry is right. */
        const float scaled = float_of(mag) * 16777216.0f;
        const uint32_t units = bits_of(scaled + 8388608.0f) - 0x4b000000u;
        return sign | (uint16_t)units;
    }

    /* Normal: rebias the exponent (127 -> 15), keep 10 mantissa bits, round on the 13 dropped
     * bits. A mantissa carry moves into the exponent field, which is the correct result. */
    uint32_t h = ((mag >> 23) - 112u) << 10 | ((mag >> 13) & 0x3ffu);
    const uint32_t dropped = mag & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (h & 1u))) h += 1u;
    return sign | (uint16_t)h;
}

float ek_fp16_to_fp32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return float_of(sign | 0x7f800000u | (mant << 13)); /* inf / NaN */
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in binary32 */
        const float v = (float)mant * 5.9604644775390625e-08f;
        return float_of(sign | bits_of(v));
    }
    return float_of(sign | ((exp + 112u) << 23) | (mant << 13));
}
