/* libedgekit: quantizers (and, later, kernels) for ggml's block formats.
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
};

/* Library version string, e.g. "0.1.0". */
const char *ek_version(void);

/* Bytes one row of n_per_row values takes in `type`; 0 if the type is unsupported
 * or n_per_row is not a multiple of its block size. */
size_t ek_row_size(int type, int64_t n_per_row);

/* Quantize nrows rows of n_per_row float32 values into dst (ek_row_size * nrows bytes).
 * imatrix: NULL, or n_per_row non-negative importance weights (per column) that steer the
 * scale search. nthreads <= 0 uses all online CPUs. Returns bytes written, 0 on error. */
size_t ek_quantize(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                   const float *imatrix, int nthreads);

#ifdef __cplusplus
}
#endif
#endif
