/* neon level: see kernels_arm.inc. Built with its own -march (native/CMakeLists.txt). */
#define EK_DOTPROD 0
#define EK_I8MM 0
#define EK_SET ek_kernels_neon
#define EK_NAME "neon"
#define EK_LEVEL EK_LEVEL_NEON
#include "kernels_arm.inc"
