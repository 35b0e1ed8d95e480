/* CPU feature detection and the choice of kernel level, made once at first use.
 * x86: cpuid for the instruction sets, xgetbv for whether the OS saves the YMM/ZMM registers
 * (a CPU with AVX-512 under an OS that does not save ZMM state must not use it).
 * ARM: getauxval(AT_HWCAP/AT_HWCAP2) on Linux and Android, sysctl on Apple. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    /* xgetbv as raw bytes (0f 01 d0): needs no -mxsave, and is only run when OSXSAVE is set */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static uint32_t detect(void) {
    uint32_t f = 0, a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    if (c & (1u << 0)) f |= EK_CPU_SSE3;
    if (c & (1u << 9)) f |= EK_CPU_SSSE3;
    const int osxsave = (c & (1u << 27)) != 0;
    const int avx = (c & (1u << 28)) != 0, fma = (c & (1u << 12)) != 0, f16c = (c & (1u << 29)) != 0;
    uint64_t xcr0 = osxsave ? read_xcr0() : 0;
    const int os_ymm = (xcr0 & 0x6) == 0x6;             /* XMM and YMM state */
    const int os_zmm = os_ymm && (xcr0 & 0xe0) == 0xe0; /* opmask, ZMM_Hi256, Hi16_ZMM */
    if (os_ymm) f |= EK_CPU_OS_YMM;
    if (os_zmm) f |= EK_CPU_OS_ZMM;
    if (!os_ymm) return f; /* no AVX of any kind without the OS saving YMM registers */
    if (avx) f |= EK_CPU_AVX;
    if (fma) f |= EK_CPU_FMA;
    if (f16c) f |= EK_CPU_F16C;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (b & (1u << 5)) f |= EK_CPU_AVX2;
        if (os_zmm) {
            if (b & (1u << 16)) f |= EK_CPU_AVX512F;
            if (b & (1u << 30)) f |= EK_CPU_AVX512BW;
            if (b & (1u << 31)) f |= EK_CPU_AVX512VL;
            if (c & (1u << 11)) f |= EK_CPU_AVX512VNNI;
        }
        const uint32_t max_sub = a;
        if (max_sub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (a & (1u << 4)) f |= EK_CPU_AVXVNNI;
        }
    }
    return f;
}

#elif defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>

static int sysctl_flag(const char *name) {
    int v = 0;
    size_t len = sizeof v;
    return sysctlbyname(name, &v, &len, NULL, 0) == 0 && v;
}

static uint32_t detect(void) {
    uint32_t f = EK_CPU_NEON | EK_CPU_FP16;
    if (sysctl_flag("hw.optional.arm.FEAT_DotProd")) f |= EK_CPU_DOTPROD;
    if (sysctl_flag("hw.optional.arm.FEAT_I8MM")) f |= EK_CPU_I8MM;
    return f;
}

#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1u << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1u << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1u << 13)
#endif

static uint32_t detect(void) {
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    uint32_t f = 0;
    if (hw & HWCAP_ASIMD) f |= EK_CPU_NEON | EK_CPU_FP16;
    if (hw & HWCAP_ASIMDDP) f |= EK_CPU_DOTPROD;
    if (hw2 & HWCAP2_I8MM) f |= EK_CPU_I8MM;
    return f;
}

#elif defined(__arm__) && defined(__linux__)
#include <sys/auxv.h>
#define EK_HWCAP_ARM_NEON (1u << 12)
#define EK_HWCAP_ARM_VFPV4 (1u << 16)

static uint32_t detect(void) {
    const unsigned long hw = getauxval(AT_HWCAP);
    uint32_t f = 0;
    if (hw & EK_HWCAP_ARM_NEON) f |= EK_CPU_NEON;
    if (hw & EK_HWCAP_ARM_VFPV4) f |= EK_CPU_FP16; /* VFPv4 brings the half-precision converts and fused MAC */
    return f;
}

#else
static uint32_t detect(void) { return 0; }
#endif

static const struct {
    uint32_t bit;
    const char *name;
} feature_names[] = {
    {EK_CPU_SSE3, "sse3"},       {EK_CPU_SSSE3, "ssse3"},           {EK_CPU_AVX, "avx"},
    {EK_CPU_AVX2, "avx2"},       {EK_CPU_FMA, "fma"},               {EK_CPU_F16C, "f16c"},
    {EK_CPU_AVX512F, "avx512f"}, {EK_CPU_AVX512BW, "avx512bw"},     {EK_CPU_AVX512VL, "avx512vl"},
    {EK_CPU_AVX512VNNI, "avx512vnni"}, {EK_CPU_AVXVNNI, "avxvnni"}, {EK_CPU_OS_YMM, "os_ymm"},
    {EK_CPU_OS_ZMM, "os_zmm"},   {EK_CPU_NEON, "neon"},             {EK_CPU_FP16, "fp16"},
    {EK_CPU_DOTPROD, "dotprod"}, {EK_CPU_I8MM, "i8mm"},
};

const char *ek_cpu_feature_name(uint32_t bit) {
    for (size_t i = 0; i < sizeof feature_names / sizeof feature_names[0]; i++) {
        if (feature_names[i].bit == bit) return feature_names[i].name;
    }
    return NULL;
}

static pthread_once_t features_once = PTHREAD_ONCE_INIT;
static uint32_t features;
static void init_features(void) { features = detect(); }

uint32_t ek_cpu_features(void) {
    pthread_once(&features_once, init_features);
    return features;
}

/* Every level this build knows, lowest first, with what it needs from the CPU. */
static const struct {
    int level;
    const char *name;
    const ek_kernel_set *set;
    uint32_t needs;
} levels[] = {
    {EK_LEVEL_SCALAR, "scalar", &ek_kernels_scalar, 0},
#if defined(EK_HAVE_X86)
    {EK_LEVEL_AVX2, "avx2", &ek_kernels_avx2, EK_CPU_AVX2 | EK_CPU_FMA | EK_CPU_F16C},
    {EK_LEVEL_AVXVNNI, "avxvnni", &ek_kernels_avxvnni, EK_CPU_AVX2 | EK_CPU_FMA | EK_CPU_F16C | EK_CPU_AVXVNNI},
    {EK_LEVEL_AVX512VNNI, "avx512vnni", &ek_kernels_avx512vnni,
     EK_CPU_AVX2 | EK_CPU_FMA | EK_CPU_F16C | EK_CPU_AVX512F | EK_CPU_AVX512BW | EK_CPU_AVX512VL |
         EK_CPU_AVX512VNNI},
#endif
#if defined(EK_HAVE_ARM)
    {EK_LEVEL_NEON, "neon", &ek_kernels_neon, EK_CPU_NEON | EK_CPU_FP16},
#endif
#if defined(EK_HAVE_ARM64)
    {EK_LEVEL_DOTPROD, "dotprod", &ek_kernels_dotprod, EK_CPU_NEON | EK_CPU_DOTPROD},
    {EK_LEVEL_I8MM, "i8mm", &ek_kernels_i8mm, EK_CPU_NEON | EK_CPU_DOTPROD | EK_CPU_I8MM},
#endif
};
#define NLEVELS (int)(sizeof levels / sizeof levels[0])

/* Names of levels other architectures have, so that asking for one is a clear warning. */
static const struct {
    const char *name;
    int level;
} all_names[] = {{"scalar", EK_LEVEL_SCALAR}, {"avx2", EK_LEVEL_AVX2},       {"avxvnni", EK_LEVEL_AVXVNNI},
                 {"avx512vnni", EK_LEVEL_AVX512VNNI}, {"neon", EK_LEVEL_NEON}, {"dotprod", EK_LEVEL_DOTPROD},
                 {"i8mm", EK_LEVEL_I8MM}};

const char *ek_level_name(int level) {
    for (size_t i = 0; i < sizeof all_names / sizeof all_names[0]; i++) {
        if (all_names[i].level == level) return all_names[i].name;
    }
    return NULL;
}

int ek_level_from_name(const char *name) {
    if (name == NULL) return -1;
    for (size_t i = 0; i < sizeof all_names / sizeof all_names[0]; i++) {
        if (strcmp(all_names[i].name, name) == 0) return all_names[i].level;
    }
    return -1;
}

static int index_of(int level) {
    for (int i = 0; i < NLEVELS; i++) {
        if (levels[i].level == level) return i;
    }
    return -1;
}

int ek_level_available(int level) {
    const int i = index_of(level);
    return i >= 0 && (ek_cpu_features() & levels[i].needs) == levels[i].needs;
}

static const ek_kernel_set *current;
static pthread_once_t level_once = PTHREAD_ONCE_INIT;

/* Best available level whose rank is at most `cap` (the scalar level always qualifies). */
static int best_up_to(int cap) {
    int best = 0;
    for (int i = 0; i < NLEVELS; i++) {
        if (levels[i].level <= cap && ek_level_available(levels[i].level)) best = i;
    }
    return best;
}

static void init_level(void) {
    int pick = best_up_to(1 << 30);
    const char *env = getenv("EDGEKIT_CPU_LEVEL");
    if (env != NULL && env[0] != '\0') {
        const int want = ek_level_from_name(env);
        if (want < 0) {
            fprintf(stderr, "edgekit: EDGEKIT_CPU_LEVEL=%s is not a kernel level (scalar, avx2, avxvnni, "
                            "avx512vnni, neon, dotprod, i8mm); using %s\n", env, levels[pick].name);
        } else if (ek_level_available(want)) {
            pick = index_of(want);
        } else {
            const int clamped = best_up_to(want);
            fprintf(stderr, "edgekit: EDGEKIT_CPU_LEVEL=%s is not available on this CPU/build; using %s\n", env,
                    levels[clamped].name);
            pick = clamped;
        }
    }
    current = levels[pick].set;
}

const ek_kernel_set *ek_kernels(void) {
    pthread_once(&level_once, init_level);
    return current;
}

int ek_kernel_level(void) { return ek_kernels()->level; }

int ek_set_kernel_level(int level) {
    ek_kernels();
    if (!ek_level_available(level)) {
        const char *name = ek_level_name(level);
        ek_set_error("kernel level %s is not available on this CPU/build", name ? name : "(unknown)");
        return -1;
    }
    current = levels[index_of(level)].set;
    return 0;
}
