# Cross-compile libedgekit for 32-bit ARM Linux, hard-float (Raspberry Pi OS armhf, ARMv7: Pi 2
# and later) with Debian's gcc-arm-linux-gnueabihf. The baseline stays ARMv7 + VFPv3-D16 (the
# Debian armhf ABI); only the NEON kernel file is built for NEON + VFPv4, chosen at run time.
#   cmake -S . -B build-armhf -DCMAKE_TOOLCHAIN_FILE=native/cmake/arm-linux-gnueabihf.cmake
# Run under qemu: qemu-arm -L /usr/arm-linux-gnueabihf ./prog
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm -L /usr/arm-linux-gnueabihf)
