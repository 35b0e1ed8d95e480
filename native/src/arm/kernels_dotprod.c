/* dotprod level: see kernels_arm.inc. Built with its own -march (native/CMakeLists.txt). */
#define EK_DOTPROD 1
#define EK_I8MM 0
#define EK_SET ek_kernels_dotprod
#define EK_NAME "dotprod"
#define EK_LEVEL EK_LEVEL_DOTPROD
#include "kernels_arm.inc"
