"""Plain multithreaded memory streams: the memory-traffic limit in benchmarks."""
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team

cdef extern from "traffic.h" nogil:
    uint64_t fdl_read_bytes(const unsigned char *p, int64_t nbytes, int level)

cdef int64_t CHUNK = 1 << 18   # 256 KiB per work item


def read(const unsigned char[::1] buf, int nthreads):
    """Read every byte of ``buf`` once (OpenMP over chunks); returns an OR of the words."""
    cdef int64_t n = buf.shape[0]
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef int64_t k, lo, ln
    cdef uint64_t acc = 0
    cdef int level = simd_level()
    if n == 0:
        return 0
    for k in prange(nchunks, nogil=True, num_threads=team(nthreads, n, nchunks), schedule="static"):
        lo = k * CHUNK
        ln = min(CHUNK, n - lo)
        acc |= fdl_read_bytes(&buf[lo], ln, level)
    return acc


def copy(unsigned char[::1] dst, const unsigned char[::1] src, int nthreads):
    """memcpy ``src`` into ``dst`` (OpenMP over chunks)."""
    cdef int64_t n = src.shape[0]
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef int64_t k, lo, ln
    if dst.shape[0] != n:
        raise ValueError(f"dst must have {n} bytes, got {dst.shape[0]}")
    for k in prange(nchunks, nogil=True, num_threads=team(nthreads, n, nchunks), schedule="static"):
        lo = k * CHUNK
        ln = min(CHUNK, n - lo)
        memcpy(&dst[lo], &src[lo], ln)
