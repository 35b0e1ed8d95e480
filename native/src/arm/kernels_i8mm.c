/* i8mm level: see kernels_arm.inc. Built with its own -march (native/CMakeLists.txt). */
#define EK_DOTPROD 1
#define EK_I8MM 1
#define EK_SET ek_kernels_i8mm
#define EK_NAME "i8mm"
#define EK_LEVEL EK_LEVEL_I8MM
#include "kernels_arm.inc"
