"""bf16 compute for ``y = x @ dequantize(q)`` (Cython backend): x rounded to
bfloat16, the weight's units as bfloat16, products summed in float32 by AVX512-BF16's
``vdpbf16ps``, each lane's partial sum of a block scaled by one float32 fma.  The
arithmetic is defined in src/qbf16k.h; the readable reference is
fastdl._backends.numpy.quant_bf16.

The C kernels are serial; the parallel loop here runs over groups of four output
columns, each computed alone (no result depends on the thread count or on n).
The instruction runs only where ``bf16_available()`` says so: elsewhere
``bf16_qmatmul`` raises ValueError naming what is missing (never SIGILL).
``emulate=True`` runs the scalar emulation of the same arithmetic instead (any
CPU; bitwise the kernel's results; tests).
"""
from libc.stdint cimport int64_t, int32_t, uint8_t, int8_t, uint16_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, threadid

import numpy as np
from fastdl._backends.cython._qcheck import array as _array, what as _what

import fastdl
from fastdl.quant import QuantizedTensor, NF4_CODEBOOK
from fastdl._validate import MissingInstructionError

from fastdl._backends.cython._cpu cimport simd_level, team
from fastdl._backends.cython import _cpu
from fastdl._backends.cython._quant cimport fdl_qk_desc, _desc as _quant_desc

cdef extern from "qbf16k.h" nogil:
    ctypedef struct fdl_qb_kernels:
        pass
    int FDL_QB_COLS
    void fdl_qb_init(const float *nf4_codebook)
    int fdl_qb_cpu_bf16()
    uint16_t fdl_qb_bf16(float v)
    int64_t fdl_qb_steps(const fdl_qk_desc *q)
    void fdl_qb_xperm(const fdl_qk_desc *q, const float *x, uint16_t *xp)
    void fdl_qb_lane_blocks(const fdl_qk_desc *q, int32_t *lb)
    const fdl_qb_kernels *fdl_qb_table(int bf16)
    void fdl_qb_cols1(const fdl_qb_kernels *K, const fdl_qk_desc *q, const float *x,
                      const uint16_t *xp, int64_t j0, int64_t j1, const int32_t *lb,
                      float *bsc, float *y)
    void fdl_qb_colsn(const fdl_qb_kernels *K, const fdl_qk_desc *q, const float *x, int64_t n,
                      const uint16_t *xps, int64_t j0, int64_t j1, uint16_t *wb,
                      const int32_t *lb, float *bsc, float *y)

_cb = np.ascontiguousarray(NF4_CODEBOOK, np.float32)
cdef const float[::1] _cbv = _cb
fdl_qb_init(&_cbv[0])

_F32 = np.dtype(np.float32)
_SCHEMES = ("absmax", "signmax", "nf4")
MISSING_CPU = "AVX512-BF16 (vdpbf16ps)"


def cpu_has_bf16():
    """Whether this CPU (and OS) runs AVX512-BF16 and AVX-512 F/BW/VL/DQ, whatever
    SIMD level is pinned."""
    return bool(fdl_qb_cpu_bf16())


def bf16_available():
    """(True, "") when bf16 compute can run here; else (False, what is missing):
    the CPU's AVX512-BF16 (vdpbf16ps) instruction, or the avx512 SIMD level
    (pinned lower with fastdl.testing.simd / set_simd_level)."""
    if not fdl_qb_cpu_bf16():
        return False, f"this CPU lacks {MISSING_CPU}"
    if simd_level() < 2:
        return False, (f"SIMD level pinned to {_cpu.active_simd()} (bf16 compute needs the "
                       f"avx512 level)")
    return True, ""


def to_bf16_bits(x):
    """float32 array -> uint16 bfloat16 bit patterns, rounded to nearest even (the
    kernels' rounding of x; tests)."""
    a = np.ascontiguousarray(x, np.float32).reshape(-1)
    out = np.empty(a.shape, np.uint16)
    cdef const float[::1] av = a
    cdef uint16_t[::1] ov = out
    cdef Py_ssize_t i
    for i in range(av.shape[0]):
        ov[i] = fdl_qb_bf16(av[i])
    return out.reshape(np.shape(x))


cdef int64_t _int(v, str name, int64_t lo, int64_t hi) except -1:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) \
            or not lo <= v <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {v!r}")
    return int(v)


cdef int _desc(fdl_qk_desc *d, q, dict keep) except -1:
    """_quant's checked descriptor of q, with what bf16 compute adds: its schemes, and
    blocks that hold whole 32-value halves of a row (one scale per lane)."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a fastdl.quant.QuantizedTensor, got {type(q).__name__}")
    scheme = q.scheme
    cdef int b = _int(q.bits, "q.bits", 2, 8)
    if scheme not in _SCHEMES:
        raise ValueError(f"bf16 compute supports q.scheme in {_SCHEMES}, got {scheme!r}")
    if scheme == "nf4" and b != 4:
        raise ValueError(f"q.scheme='nf4' needs q.bits=4, got {b}")
    if q.block_size is not None:
        _int(q.block_size, "q.block_size", 1, 2 ** 62)
    _quant_desc(d, q, keep)
    if not d.per_tensor and d.bs % 32 and d.nb > 1:
        raise ValueError(f"bf16 compute needs q.block_size a multiple of 32 or None (per "
                         f"tensor), got {q.block_size}")
    if d.nb >= 2 ** 31 - 1:
        raise ValueError(f"bf16 compute needs fewer than 2**31 - 1 blocks per row, got "
                         f"{d.nb} (d_in={d.d_in}, block_size={d.bs})")
    return 0


cdef void *_alloc(size_t nbytes) except NULL:
    cdef void *p = malloc(nbytes if nbytes > 0 else 1)
    if p == NULL:
        raise MemoryError(f"bf16_qmatmul: out of memory for {nbytes} bytes of work buffers")
    return p


cdef int _run(const fdl_qb_kernels *K, const fdl_qk_desc *d, const float *x, int64_t n,
              float *y, int nthreads) except -1:
    cdef int64_t G = FDL_QB_COLS, ng = (d.d_out + G - 1) // G, g, i
    cdef int64_t nst = fdl_qb_steps(d), ldb = d.nb + 1, ldw = 64 * nst
    cdef int nt = team(nthreads, d.rowb * d.d_out * n, ng)
    cdef int nx = team(nthreads, n * d.d_in * 6, n)
    # one block of memory: x in lane order, the lane blocks, per thread the block
    # scales (and for n > 1 the decoded columns)
    cdef int64_t xb = n * ldw * 2, lbb = 2 * nst * 4 + 4, sb = nt * G * ldb * 4
    cdef int64_t wbb = nt * G * ldw * 2 if n > 1 else 0
    cdef char *mem = <char *>_alloc(xb + lbb + sb + wbb + 64)
    cdef uint16_t *xp = <uint16_t *>mem
    cdef int32_t *lb = <int32_t *>(mem + ((xb + 15) // 16) * 16)
    cdef float *bsc = <float *>(<char *>lb + ((lbb + 15) // 16) * 16)
    cdef uint16_t *wb = <uint16_t *>(<char *>bsc + ((sb + 15) // 16) * 16)
    with nogil:
        fdl_qb_lane_blocks(d, lb)
        for i in prange(n, num_threads=nx, schedule="static"):
            fdl_qb_xperm(d, x + i * d.d_in, xp + i * ldw)
        if n == 1:
            for g in prange(ng, num_threads=nt, schedule="static"):
                fdl_qb_cols1(K, d, x, xp, g * G, min(d.d_out, g * G + G), lb,
                             bsc + threadid() * G * ldb, y)
        else:
            for g in prange(ng, num_threads=nt, schedule="static"):
                fdl_qb_colsn(K, d, x, n, xp, g * G, min(d.d_out, g * G + G),
                             wb + threadid() * G * ldw, lb, bsc + threadid() * G * ldb, y)
    free(mem)
    return 0


def bf16_qmatmul(x, q, out=None, nthreads=None, emulate=False):
    """y = x @ dequantize(q) with bf16 compute: x float32 C-contiguous (n, d_in), n >= 1;
    q a QuantizedTensor (absmax/signmax bits 2..8 or NF4; block size a multiple of 32,
    or per tensor; double quantization allowed); out: None or a writeable C-contiguous
    float32 (n, d_out) not overlapping the inputs; nthreads: None (fastdl's setting)
    or >= 1.  Raises ValueError naming what is missing when this CPU or the pinned
    SIMD level cannot run AVX512-BF16.  emulate=True: the scalar emulation (any CPU,
    bitwise the same results)."""
    if not isinstance(emulate, (bool, np.bool_)):
        raise TypeError(f"emulate must be a bool, got {emulate!r}")
    if not emulate:
        ok, why = bf16_available()
        if not ok:
            raise MissingInstructionError(f"compute='bf16' cannot run: {why}")
    cdef int nt = fastdl.get_num_threads() if nthreads is None else \
        _int(nthreads, "nthreads", 1, 1 << 20)
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep)
    if not isinstance(x, np.ndarray) or x.dtype != _F32:
        raise TypeError(f"x must be a float32 numpy.ndarray, got {_what(x)}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != d.d_in:
        raise ValueError(f"x must have shape (n, {d.d_in}) with n >= 1, got {x.shape}")
    _array(x, "x", np.float32, x.shape)
    cdef int64_t n = x.shape[0]
    if out is None:
        out = np.empty((int(n), int(d.d_out)), np.float32)
    else:
        _array(out, "out", np.float32, (int(n), int(d.d_out)), writeable=True)
        for a in (x,) + tuple(keep.values()):
            if np.may_share_memory(out, a):
                raise ValueError("out must not overlap the input arrays")
    cdef const float[:, ::1] xv = x
    cdef float[:, ::1] ov = out
    _run(fdl_qb_table(0 if emulate else 1), &d, &xv[0, 0], n, &ov[0, 0], nt)
    return out
