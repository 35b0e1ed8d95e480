/* avxvnni level: see kernels_x86.inc. Built with its own target flags (native/CMakeLists.txt). */
#define EK_VNNI 1
#define EK_SET ek_kernels_avxvnni
#define EK_NAME "avxvnni"
#define EK_LEVEL EK_LEVEL_AVXVNNI
#define EK_FLOAT_IMPL "avx2" /* float weights have no integer dot: the VNNI levels share AVX2's code */
#define EK_KQ_IMPL "avxvnni" /* K-quant GEMV: the AVX2 code (vpmaddwd folds the scales); GEMM: VNNI */
#include "kernels_x86.inc"
