/* avx512vnni level: see kernels_x86.inc. Built with its own target flags (native/CMakeLists.txt). */
#define EK_VNNI 2
#define NT 8 /* 32 vector registers: 8-token register tiles */
#define EK_SET ek_kernels_avx512vnni
#define EK_NAME "avx512vnni"
#define EK_LEVEL EK_LEVEL_AVX512VNNI
#define EK_FLOAT_IMPL "avx512vnni" /* float weights: 512-bit FMAs */
#define EK_KQ_IMPL "avx512vnni" /* K-quant GEMV: 512-bit AVX-512BW; GEMM: VNNI */
#include "kernels_x86.inc"
