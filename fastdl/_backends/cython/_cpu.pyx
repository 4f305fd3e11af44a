"""CPU feature detection, SIMD level selection and build facts.

Every kernel module cimports ``simd_level`` from here, so a single switch
(``set_simd_level`` or env ``FASTDL_SIMD``) selects the SIMD or the scalar
twin everywhere.  ``team`` sizes every parallel region (src/team.c): the
kernels cimport it, C sources get it as a function pointer.
"""
from libc.stdint cimport int64_t

cdef extern from "simd.h":
    int FDL_SIMD_SCALAR
    int FDL_SIMD_AVX2
    int FDL_SIMD_AVX512
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

cdef extern from "team.h":
    int FDL_TEAM_MAX
    int fdl_team(int nthreads, int64_t work_bytes, int64_t units) noexcept nogil
    int fdl_team_blas(int nthreads) nogil
    int fdl_team_install_fork_handlers() nogil
    int64_t fdl_team_set_grain(int64_t bytes) nogil
    int fdl_team_set_adaptive(int on) nogil
    int fdl_team_free_cpus() nogil
    int fdl_team_free_from(int cpus, int64_t cpu_ns, int64_t delay_ns) nogil
    int fdl_team_child_serial() nogil
    int fdl_team_fork_pause() nogil

if fdl_team_install_fork_handlers():
    raise ImportError("fastdl: pthread_atfork failed; forked children could hang in OpenMP")

TEAM_MAX = FDL_TEAM_MAX


cdef int team(int nthreads, int64_t work_bytes, int64_t units) noexcept nogil:
    return fdl_team(nthreads, work_bytes, units)


def team_size(int nthreads, int64_t work_bytes, int64_t units):
    """Threads a region over ``units`` work units of ``work_bytes`` bytes gets."""
    return fdl_team(nthreads, work_bytes, units)


_blas_set = None     # ctypes setter of the BLAS behind scipy.linalg.cython_blas, or False
_blas_get = None     # getter for a process-wide setter (None: the setter returns the old count)


def _bind_blas():
    """Find how to set the thread count of the BLAS that scipy.linalg.cython_blas
    calls: OpenBLAS's thread-local setter (0.3.27+), else its process-wide one."""
    global _blas_set, _blas_get
    _blas_set = False
    try:
        import ctypes
        import scipy.linalg.cython_blas as cb
        lib = ctypes.CDLL(cb.__file__)      # already loaded: symbols of it and its BLAS
    except (ImportError, OSError):
        return
    for name in ("openblas_set_num_threads_local", "scipy_openblas_set_num_threads_local"):
        f = getattr(lib, name, None)
        if f is not None:
            f.restype, f.argtypes = ctypes.c_int, [ctypes.c_int]
            _blas_set = f
            return
    for prefix in ("scipy_openblas", "openblas"):
        f = getattr(lib, prefix + "_set_num_threads", None)
        g = getattr(lib, prefix + "_get_num_threads", None)
        if f is not None and g is not None:
            f.restype, f.argtypes = None, [ctypes.c_int]
            g.restype, g.argtypes = ctypes.c_int, []
            _blas_set, _blas_get = f, g
            return


def blas_threads(int n):
    """Set the calling thread's BLAS thread count to ``n``; returns the previous
    count, or 0 when the BLAS offers no way to set it (then nothing changed)."""
    if _blas_set is None:
        _bind_blas()
    if _blas_set is False or n < 1:
        return 0
    if _blas_get is not None:
        old = _blas_get()
        if old != n:
            _blas_set(n)
        return old
    return _blas_set(n)


def blas_team(int nthreads):
    """Threads for one BLAS call of a kernel configured for ``nthreads``."""
    return fdl_team_blas(nthreads)


def set_grain(int64_t nbytes):
    """Work (bytes) below which a region runs on one thread; returns the previous
    value.  Tests set 0 to run the parallel paths on small inputs."""
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    return fdl_team_set_grain(nbytes)


def set_load_adaptive(bint on):
    """Whether regions shrink to the CPUs that other processes leave free (on by
    default); returns the previous setting."""
    return bool(fdl_team_set_adaptive(on))


def free_cpus():
    """CPUs other processes leave free, judged from the calling thread's wait for a CPU (>= 1)."""
    return fdl_team_free_cpus()


def _free_from(int cpus, int64_t cpu_ns, int64_t delay_ns):
    """free_cpus' arithmetic on a given window: the thread ran cpu_ns and waited
    delay_ns for a CPU (tests)."""
    return fdl_team_free_from(cpus, cpu_ns, delay_ns)


def fork_facts():
    """(forks release the OpenMP pool, this process runs serially after a fork)."""
    return bool(fdl_team_fork_pause()), bool(fdl_team_child_serial())


LEVELS = {"scalar": FDL_SIMD_SCALAR, "avx2": FDL_SIMD_AVX2, "avx512": FDL_SIMD_AVX512}
_NAMES = {v: k for k, v in LEVELS.items()}

cdef int _detected = min(fdl_cpu_simd_level(), fdl_compiled_simd_level())
cdef int _active = _detected


cdef int simd_level() noexcept nogil:
    return _active


def detected_simd():
    """Best SIMD level usable on this CPU by this build: 'avx512', 'avx2' or 'scalar'."""
    return _NAMES[_detected]


def active_simd():
    """SIMD level the kernels use now."""
    return _NAMES[_active]


def set_simd_level(name):
    """Select the kernels' SIMD level ('avx512', 'avx2' or 'scalar'); returns the previous one.

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
