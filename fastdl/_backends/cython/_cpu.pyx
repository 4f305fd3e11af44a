"""CPU feature detection, SIMD level selection and build facts.

Every kernel module cimports ``simd_level`` from here, so a single switch
(``set_simd_level`` or env ``FASTDL_SIMD``) selects the SIMD or the scalar
twin everywhere.
"""

cdef extern from "simd.h":
    int FDL_SIMD_SCALAR
    int FDL_SIMD_AVX2
    int fdl_cpu_simd_level() nogil
    int fdl_compiled_simd_level() nogil
    int fdl_openmp_enabled() nogil
    const char *fdl_compiler_version() nogil

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fdl_omp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int fdl_omp_max_threads(void) { return 1; }
    #endif
    """
    int fdl_omp_max_threads() nogil

LEVELS = {"scalar": FDL_SIMD_SCALAR, "avx2": FDL_SIMD_AVX2}
_NAMES = {v: k for k, v in LEVELS.items()}

cdef int _detected = min(fdl_cpu_simd_level(), fdl_compiled_simd_level())
cdef int _active = _detected


cdef int simd_level() noexcept nogil:
    return _active


def detected_simd():
    """Best SIMD level usable on this CPU by this build: 'avx2' or 'scalar'."""
    return _NAMES[_detected]


def active_simd():
    """SIMD level the kernels use now."""
    return _NAMES[_active]


def set_simd_level(name):
    """Select the kernels' SIMD level ('avx2' or 'scalar'); returns the previous one.

    Meant for testing the scalar twins and for benchmarking; the default is the
    best detected level.
    """
    global _active
    if name not in LEVELS:
        raise ValueError(f"simd level must be one of {sorted(LEVELS)}, got {name!r}")
    if LEVELS[name] > _detected:
        raise ValueError(
            f"simd level {name!r} is not supported on this CPU/build "
            f"(detected {_NAMES[_detected]!r})")
    previous = _NAMES[_active]
    _active = LEVELS[name]
    return previous


def openmp_enabled():
    return bool(fdl_openmp_enabled())


def openmp_max_threads():
    return fdl_omp_max_threads()


def compiler_version():
    return fdl_compiler_version().decode()
