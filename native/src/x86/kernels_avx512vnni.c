/* avx512vnni level: see kernels_x86.inc. Built with its own target flags (native/CMakeLists.txt). */
#define EK_VNNI 2
#define EK_SET ek_kernels_avx512vnni
#define EK_NAME "avx512vnni"
#define EK_LEVEL EK_LEVEL_AVX512VNNI
#define EK_FLOAT_IMPL "avx512vnni" /* float weights have no integer dot: the VNNI levels share AVX2's code */
#include "kernels_x86.inc"
