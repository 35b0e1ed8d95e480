/* avx2 level: see kernels_x86.inc. Built with its own target flags (native/CMakeLists.txt). */
#define EK_VNNI 0
#define EK_SET ek_kernels_avx2
#define EK_NAME "avx2"
#define EK_LEVEL EK_LEVEL_AVX2
#define EK_FLOAT_IMPL "avx2" /* float weights have no integer dot: the VNNI levels share AVX2's code */
#define EK_KQ_IMPL "avx2" /* K-quants use vpmaddubsw/vpmaddwd, not VNNI: the AVX2 code */
#include "kernels_x86.inc"
