# The one place kernels ask which SIMD level to use.
cdef int simd_level() noexcept nogil
