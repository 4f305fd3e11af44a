/* Run-time SIMD selection shared by every fastdl kernel.
 *
 * Kernels are compiled for the baseline ISA; AVX2/FMA and AVX-512 versions
 * are separate functions marked with FDL_TARGET_AVX2 / FDL_TARGET_AVX512 and
 * called only when fdl_cpu_simd_level() reports support (never
 * -march=native).  Each SIMD kernel has a scalar twin that tests compare
 * against.  The levels are ordered: a kernel without an AVX-512 version runs
 * its AVX2 one at the AVX-512 level.  The AVX2 tier also requires F16C
 * (float16 <-> float32 conversion; every AVX2 CPU has it, but the bit is
 * checked), so AVX2 code may convert float16 with it.  The AVX-512 tier is
 * F+BW+VL+DQ (Intel Skylake-SP and later, AMD Zen 4 and later) on top of AVX2.
 */
#ifndef FASTDL_SIMD_H
#define FASTDL_SIMD_H

#include <stdint.h>

#define FDL_SIMD_SCALAR 0
#define FDL_SIMD_AVX2 1
#define FDL_SIMD_AVX512 2

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FDL_HAVE_AVX2_TARGET 1
#define FDL_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FDL_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#include <immintrin.h>
#else
#define FDL_HAVE_AVX2_TARGET 0
#endif

/* Best level this CPU (and OS) supports. */
static inline int fdl_cpu_simd_level(void) {
#if FDL_HAVE_AVX2_TARGET
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("f16c")))
        return FDL_SIMD_SCALAR;
    /* the compiler's check includes the OS saving the 512-bit state (XCR0) */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return FDL_SIMD_AVX512;
    return FDL_SIMD_AVX2;
#endif
    return FDL_SIMD_SCALAR;
}

/* Level the compiler could build code for (0 = scalar only). */
static inline int fdl_compiled_simd_level(void) {
    return FDL_HAVE_AVX2_TARGET ? FDL_SIMD_AVX512 : FDL_SIMD_SCALAR;
}

static inline int fdl_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static inline const char *fdl_compiler_version(void) {
#if defined(__clang__)
    return "clang " __clang_version__;
#elif defined(__GNUC__)
    return "gcc " __VERSION__;
#elif defined(_MSC_VER)
    return "msvc";
#else
    return "unknown";
#endif
}

#endif
