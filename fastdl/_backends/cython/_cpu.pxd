# The one place kernels ask which SIMD level to use.
cdef int simd_level() noexcept nogil
# Threads for one parallel region (grain, units, load, fork): see src/team.h.
from libc.stdint cimport int64_t
cdef int team(int nthreads, int64_t work_bytes, int64_t units) noexcept nogil
