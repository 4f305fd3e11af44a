"""Quantization kernels (Cython backend); format and op contracts in fastdl.quant,
arithmetic contracts of the kernels in src/quantk.h.

The C kernels (src/quantk_*.c) are serial; the parallel loops are here, over
independent chunks, each thread with its own scratch buffer (allocated before
the loop), so no result depends on the thread count.  The SIMD level's kernel
table is fetched once per call.

* ``quantize``: column strips of W, tiles of block rows x strip: the block
  absmax is a max over rows of vectors along j, codes go through a small
  transpose buffer, then are packed into the storage rows.
* ``dequantize``: strips of storage rows decoded into a small buffer, written
  transposed.
* ``qmatmul``: n <= ``PARAMS["small_n"]`` (``"small_n_t"`` transposed; both
  measured): fused kernels.  n = 1: each 32-value half is unpacked in registers
  and FMA'd with x into per-block lane accumulators, one scale multiply per
  block.  n >= 2: each group of storage rows is decoded once into float32
  values (exactly dequantize's), then register tiles of rows x columns.
  Transposed: threads own slices of d_in (private, padded accumulation buffers)
  and loop over the storage rows j in order, four at a time, y += (x[:, j] *
  s_jb) * unit: the same fma sequence per element for any thread count.  Larger
  n: panels of ``PARAMS["panel"]`` storage rows (at most PANEL_BYTES of decoded
  values) dequantized (exact float32 values) and multiplied with BLAS sgemm/dgemm
  outside any parallel loop.  A panel is decoded by a team of the size the BLAS call
  gets (one thread when other processes keep the CPUs busy), and the team's threads
  are released before the GEMM so none spins beside OpenBLAS's; few, large panels
  keep those hand-overs rare.
"""
from libc.stdint cimport int64_t, uint8_t, int8_t, uint32_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from cython.parallel cimport prange, threadid
from scipy.linalg.cython_blas cimport sgemm, dgemm

import numpy as np

from fastdl.quant import QuantizedTensor, row_bytes

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team
from fastdl._backends.cython import _cpu

fdl_qk_init()

cdef int64_t INT_MAX = 2147483647

# Tuning constants, measured on the 2-core AVX2 Xeon of the project (float32,
# d_in = d_out = 4096, int8 / int4 / NF4+dq blocks of 64, 2 threads, median of 9):
# the fused kernel beats panels + sgemm up to n = 16 (x @ W: 8.2 vs 9.7 ms; n = 24
# is even, 32 loses 16 vs 13 ms) and, transposed, up to n = 48 (17 vs 19 ms; n = 64
# loses 25 vs 20 ms).  panel / panel_t: storage rows per GEMM (2-core AVX-512 Xeon,
# n = 128 / 512, NF4+dq, int4): each panel costs a hand-over (decode team started and
# released, OpenBLAS's threads woken) that waits for a CPU on a busy machine, so
# panels are large: with three busy processes and fixed 2-thread teams 1024 rows
# took 3.7x the time of x @ W, 256 rows 17x.  Decoding runs at about a copy's speed
# (AVX-512 ~0.2 ns per weight and thread, bound by the float32 stores).  decode_team:
# 0 decodes a panel on the BLAS call's team, 1 on the calling thread alone (the
# default): OpenBLAS's workers spin ~0.1 s after each GEMM, so a second decode thread
# fights one of them for its core.  The benchmark runner's interleaved rounds on the
# quiet machine, time / NumPy's x @ W: team 1 0.94-1.22 (one outlier 1.48), team 0
# 1.69-3.19.
PARAMS = {"small_n": 20, "small_n_t": 48, "panel": 1024, "panel_t": 1024, "decode_team": 1}
# a panel's decoded values at most (so a wide d_in gets fewer rows per panel)
cdef int64_t PANEL_BYTES = 16 << 20
_DEFAULTS = dict(PARAMS)


def set_params(**kw):
    """Change tuning constants (tests and benchmarks); returns the previous values.
    ``set_params(**_DEFAULTS)`` restores."""
    old = {}
    for k, v in kw.items():
        if k not in PARAMS:
            raise ValueError(f"unknown parameter {k!r}; known: {sorted(PARAMS)}")
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k.startswith("small") or k == "decode_team" else 1):
            raise ValueError(f"{k} must be a positive int, got {v!r}")
        if k == "decode_team" and v > 1:
            raise ValueError(f"decode_team must be 0 (the BLAS call's team) or 1, got {v!r}")
        old[k] = PARAMS[k]
    PARAMS.update(kw)
    return old


def nf4_thresholds():
    cdef const float *t = fdl_qk_nf4_thresholds()
    return np.array([t[k] for k in range(15)], np.float32)


# ---------------------------------------------------------------- checks
# These functions are reachable directly (backend ops, plugins, tests), so each checks
# every fact the C kernels index memory with before it releases the GIL: a wrong
# size, dtype, stride or block size must be a ValueError/TypeError, never a write
# past a buffer.

_SCHEMES = ("absmax", "nf4")
_ROUNDINGS = ("nearest", "floor")
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _desc_of(a):
    return f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}".rstrip()


cdef _array(a, str name, dtypes, tuple shape, bint writeable=False):
    """a: an ndarray of one of ``dtypes`` (native order), exactly ``shape``, C-contiguous."""
    if not isinstance(a, np.ndarray) or a.dtype not in dtypes:
        want = "/".join(str(np.dtype(t)) for t in dtypes)
        raise TypeError(f"{name} must be a {want} numpy.ndarray, got {_desc_of(a)}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {a.strides} for shape "
                         f"{a.shape}")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} must be writeable")
    return a


cdef int64_t _rowb(int64_t d_in, int bits):
    return d_in if bits > 4 else row_bytes(d_in)     # the storage layout's one definition


cdef _check_format(int bits, scheme, rounding):
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {_SCHEMES}, got {scheme!r}")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    if scheme == "nf4" and bits != 4:
        raise ValueError(f"scheme='nf4' needs bits=4, got {bits}")


cdef _check_quantize(w, int bits, scheme, int64_t bs, rounding, bint per_tensor):
    if not isinstance(w, np.ndarray) or w.dtype != _F32:
        raise TypeError(f"w must be a float32 numpy.ndarray, got {_desc_of(w)}")
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"w must be a non-empty 2-D array (d_in, d_out), got shape {w.shape}")
    _array(w, "w", (_F32,), w.shape)
    _check_format(bits, scheme, rounding)
    if not per_tensor and not 1 <= bs <= w.shape[0]:
        raise ValueError(f"block_size must be in [1, d_in={w.shape[0]}] (a larger block is "
                         f"one block of d_in), got {bs}")


cdef int64_t _dim(v, str name) except -1:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1 \
            or v > 2 ** 62:
        raise ValueError(f"{name} must be an int in [1, 2**62], got {v!r}")
    return int(v)


cdef _check_out_array(out, tuple shape, dtypes, inputs):
    _array(out, "out", dtypes, shape, writeable=True)
    for a in inputs:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError("out must not overlap the input arrays")


# ---------------------------------------------------------------- parallel drivers
# Each loop runs serial C kernels over independent chunks; scratch buffers are one
# slice per thread of a buffer allocated before the loop (threadid() < the team size).

cdef int64_t ABSMAX_CHUNK = 65536


cdef void *_alloc(size_t nbytes) except NULL:
    cdef void *p = malloc(nbytes if nbytes > 0 else 1)
    if p == NULL:
        raise MemoryError(f"out of memory for {nbytes} bytes of kernel work buffers")
    return p


cdef int _quantize(const fdl_qk_kernels *K, const float *w, int64_t d_in, int64_t d_out,
                   int bits, int nf4, int64_t bs, int fl, bint per_tensor, uint8_t *data,
                   float *scales, int nthreads) except -1:
    cdef fdl_qk_qplan p
    cdef int64_t total = d_in * d_out, nch, c, s, t
    cdef uint32_t mb = 0
    cdef uint32_t *part
    cdef uint8_t *buf
    cdef float *msc
    cdef int nt
    fdl_qk_qplan_init(&p, d_in, d_out, bits, nf4, bs, fl, per_tensor, nthreads)
    if per_tensor:
        # the tensor's absmax: a max per fixed chunk, then over the chunks
        nch = (total + ABSMAX_CHUNK - 1) // ABSMAX_CHUNK
        part = <uint32_t *>_alloc(nch * sizeof(uint32_t))
        nt = team(nthreads, total * 4, total // ABSMAX_CHUNK)
        for c in prange(nch, nogil=True, num_threads=nt, schedule="static"):
            part[c] = fdl_qk_absmax_bits(w, c * ABSMAX_CHUNK, min(total, (c + 1) * ABSMAX_CHUNK))
        for c in range(nch):
            mb = max(mb, part[c])
        free(part)
        scales[0] = fdl_qk_qplan_tensor_scale(&p, mb)
    nt = team(nthreads, total * 4, p.nstrips)
    buf = <uint8_t *>_alloc(nt * p.JS * p.R)
    msc = <float *>malloc(nt * 2 * p.JS * sizeof(float))
    if msc == NULL:
        free(buf)
        raise MemoryError("quantize: out of memory for the tile buffers")
    for s in prange(p.nstrips, nogil=True, num_threads=nt, schedule="static"):
        t = threadid()
        fdl_qk_quantize_strip(K, &p, w, s, data, scales, buf + t * p.JS * p.R,
                              msc + t * 2 * p.JS)
    free(buf)
    free(msc)
    return 0


cdef void _dequantize(const fdl_qk_kernels *K, const fdl_qk_desc *d, void *out, int f64,
                      int nthreads) noexcept nogil:
    cdef int64_t nst = fdl_qk_dequantize_strips(d), s
    cdef int nt = team(nthreads, d.d_in * d.d_out * 4, nst)
    for s in prange(nst, num_threads=nt, schedule="static"):
        fdl_qk_dequantize_strip(K, d, s, out, f64)


cdef int _mv_f64(const fdl_qk_kernels *K, const fdl_qk_desc *d, const double *x, int64_t n,
                 double *y, int nthreads) except -1:
    """y = x @ W, small n, float64 x: per column, the decoded values and double sums."""
    cdef int64_t j
    cdef int nt = team(nthreads, d.d_in * d.d_out * n, d.d_out)
    cdef float *buf = <float *>_alloc(nt * d.d_in * sizeof(float))
    for j in prange(d.d_out, nogil=True, num_threads=nt, schedule="static"):
        fdl_qk_mv_col_f64(K, d, j, x, n, y, buf + threadid() * d.d_in)
    free(buf)
    return 0


cdef int _mv_f32(const fdl_qk_kernels *K, const fdl_qk_desc *d, const float *x, int64_t n,
                 float *y, int nthreads) except -1:
    """y = x @ W, small n, float32 x: groups of FDL_QK_MV_COLS columns."""
    cdef int64_t d_in = d.d_in, d_out = d.d_out, g, i, xl_len
    cdef int64_t G = FDL_QK_MV_COLS, ng = (d_out + G - 1) // G, ldp = d_in + 16
    cdef int nt = team(nthreads, d_in * d_out * n, d_out)
    cdef float *buf = NULL
    cdef float *xp = NULL
    if n == 1:
        # NF4: x in the kernels' lane order, once per call
        xl_len = fdl_qk_mv1_xl_len(d)
        if xl_len:
            buf = <float *>_alloc(xl_len * sizeof(float))
            fdl_qk_mv1_perm(d, x, buf)
        for g in prange(ng, nogil=True, num_threads=nt, schedule="static"):
            fdl_qk_mv1_cols(K, d, x, buf, y, g * G, min(d_out, g * G + G))
        free(buf)
        return 0
    # x with a padded row stride (rows d_in apart share L1 sets)
    xp = <float *>_alloc(n * ldp * sizeof(float))
    for i in range(n):
        memcpy(xp + i * ldp, x + i * d_in, d_in * sizeof(float))
    buf = <float *>malloc(nt * G * ldp * sizeof(float))
    if buf == NULL:
        free(xp)
        raise MemoryError("qmatmul: out of memory for the work buffers")
    for g in prange(ng, nogil=True, num_threads=nt, schedule="static"):
        fdl_qk_mvn_cols(K, d, xp, ldp, n, y, g * G, min(d_out, g * G + G),
                        buf + threadid() * G * ldp)
    free(buf)
    free(xp)
    return 0


cdef int _mt_f64(const fdl_qk_kernels *K, const fdl_qk_desc *d, const double *x, int64_t n,
                 double *y, int nthreads) except -1:
    """y = x @ W.T, small n, float64 x: chunks of d_in, each over every storage row."""
    cdef int64_t ch, nch, c
    fdl_qk_mt_plan(d, n, nthreads, &ch, &nch)
    cdef int nt = team(nthreads, d.d_in * d.d_out * n, nch)
    cdef float *ub = <float *>_alloc(nt * ch * sizeof(float))
    for c in prange(nch, nogil=True, num_threads=nt, schedule="static"):
        fdl_qk_mt_chunk_f64(K, d, c, ch, x, n, y, ub + threadid() * ch)
    free(ub)
    return 0


cdef int _mt_f32(const fdl_qk_kernels *K, const fdl_qk_desc *d, const float *x, int64_t n,
                 float *y, int nthreads) except -1:
    """y = x @ W.T, small n, float32 x: chunks of d_in, each over every storage row in
    order, four at a time, into a private padded buffer."""
    cdef int64_t ch, nch, c, t, ldb
    fdl_qk_mt_plan(d, n, nthreads, &ch, &nch)
    cdef int nt = team(nthreads, d.d_in * d.d_out * n, nch)
    cdef float *cs
    cdef float *yb
    ldb = ch + 16
    cs = <float *>_alloc(nt * 4 * n * sizeof(float))
    yb = <float *>malloc(nt * n * ldb * sizeof(float))
    if yb == NULL:
        free(cs)
        raise MemoryError("qmatmul: out of memory for the work buffers")
    for c in prange(nch, nogil=True, num_threads=nt, schedule="static"):
        t = threadid()
        fdl_qk_mt_chunk(K, d, c, ch, x, n, y, cs + t * 4 * n, yb + t * n * ldb, ldb)
    free(cs)
    free(yb)
    return 0


cdef int _mm_blas(const fdl_qk_kernels *K, const fdl_qk_desc *d, real *x, int64_t n, real *y,
                  bint transpose, int bthreads, int64_t panel) except -1:
    """Panels of `panel` storage rows, each decoded by a team of at most the BLAS call's
    `bthreads` threads, then one GEMM, outside any parallel loop.  The decode team is
    released before the GEMM: its idle threads would otherwise spin beside OpenBLAS's."""
    cdef int64_t d_in = d.d_in, d_out = d.d_out, j0, jn, jj, k
    panel = max(1, min(panel, d_out, max(16, PANEL_BYTES // (d_in * <int64_t>sizeof(real)))))
    cdef real *P = <real *>_alloc(panel * d_in * sizeof(real))
    cdef int nt = team(bthreads, panel * d_in * sizeof(real), panel)
    cdef int ni = <int>n, di = <int>d_in, doi = <int>d_out, jni
    cdef real one = 1, beta
    cdef char *T = b"T"
    cdef char *N = b"N"
    with nogil:
        for k in range((d_out + panel - 1) // panel):
            j0 = k * panel
            jn = min(panel, d_out - j0)
            jni = <int>jn
            if nt > 1:
                for jj in prange(jn, num_threads=nt, schedule="static"):
                    fdl_qk_decode_row(K, d, j0 + jj, P + jj * d_in, real is double)
                fdl_qk_release_team()
            else:
                for jj in range(jn):
                    fdl_qk_decode_row(K, d, j0 + jj, P + jj * d_in, real is double)
            beta = 1 if transpose and j0 > 0 else 0
            if real is float:
                if not transpose:
                    sgemm(T, N, &jni, &ni, &di, &one, P, &di, x, &di, &beta, y + j0, &doi)
                else:
                    sgemm(N, N, &di, &ni, &jni, &one, P, &di, x + j0, &doi, &beta, y, &di)
            else:
                if not transpose:
                    dgemm(T, N, &jni, &ni, &di, &one, P, &di, x, &di, &beta, y + j0, &doi)
                else:
                    dgemm(N, N, &di, &ni, &jni, &one, P, &di, x + j0, &doi, &beta, y, &di)
    free(P)
    return 0


cdef int _qmatmul(const fdl_qk_desc *d, const real[:, ::1] x, real[:, ::1] y, bint transpose,
                  bint small, int nthreads, int bthreads, int64_t panel) except -1:
    # the SIMD level's kernel table, read once per call
    cdef const fdl_qk_kernels *K = fdl_qk_table(simd_level())
    cdef int64_t n = x.shape[0]
    if not small:
        return _mm_blas(K, d, <real *>&x[0, 0], n, &y[0, 0], transpose, bthreads, panel)
    if real is double:
        if transpose:
            return _mt_f64(K, d, &x[0, 0], n, &y[0, 0], nthreads)
        return _mv_f64(K, d, &x[0, 0], n, &y[0, 0], nthreads)
    else:
        if transpose:
            return _mt_f32(K, d, &x[0, 0], n, &y[0, 0], nthreads)
        return _mv_f32(K, d, &x[0, 0], n, &y[0, 0], nthreads)



def quantize(w, int bits, scheme, int64_t block_size, rounding, bint per_tensor, int nthreads):
    """w: C-contiguous float32 (d_in, d_out); 1 <= block_size <= d_in (ignored per tensor)."""
    _check_quantize(w, bits, scheme, block_size, rounding, per_tensor)
    cdef const float[:, ::1] wv = w
    cdef int64_t d_in = wv.shape[0], d_out = wv.shape[1]
    cdef int nf4 = scheme == "nf4"
    cdef int fl = rounding == "floor"
    cdef int64_t nb = 1
    if not per_tensor:
        nb = (d_in + block_size - 1) // block_size
    cdef int64_t rowb = _rowb(d_in, bits)
    data = np.empty((d_out, rowb), np.int8 if bits > 4 else np.uint8)
    sshape = (1,)
    if not per_tensor:
        sshape = (int(d_out), int(nb))
    scales = np.empty(sshape, np.float32)
    cdef uint8_t[:, ::1] dv = data.view(np.uint8)
    cdef float[::1] sv = scales.reshape(-1)
    _quantize(fdl_qk_table(simd_level()), &wv[0, 0], d_in, d_out, bits, nf4, block_size, fl,
              per_tensor, &dv[0, 0], &sv[0], nthreads)
    return data, scales


cdef int _desc(fdl_qk_desc *d, q, dict keep, bint as_absmax=False) except -1:
    """Check the QuantizedTensor q field by field against each other (it may have been
    built by hand or be a subclass) and fill d; each field is read once, and keep holds
    the arrays alive.  'signmax' codes are stored as absmax's and read so; ``as_absmax``
    reads any other integer scheme's codes as absmax units too (the _qint8 kernels'
    codes_as_absmax).  The other kernel modules (_qint8, _qbf16) build their desc here."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a fastdl.quant.QuantizedTensor, got {type(q).__name__}")
    shape, bits, scheme, bsz, dq = q.shape, q.bits, q.scheme, q.block_size, q.double_quant
    if not isinstance(shape, tuple) or len(shape) != 2:
        raise ValueError(f"q.shape must be a tuple (d_in, d_out), got {shape!r}")
    cdef int64_t d_in = _dim(shape[0], "q.shape[0]"), d_out = _dim(shape[1], "q.shape[1]")
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) \
            or not 2 <= bits <= 8:
        raise ValueError(f"q.bits must be an int in 2..8, got {bits!r}")
    if scheme == "signmax" or (as_absmax and isinstance(scheme, str) and scheme != "nf4"):
        scheme = "absmax"
    _check_format(int(bits), scheme, "nearest")
    if not isinstance(dq, (bool, np.bool_)):
        raise TypeError(f"q.double_quant must be a bool, got {dq!r}")
    cdef int64_t bs = d_in, nb = 1
    if bsz is None:
        if dq:
            raise ValueError("q.double_quant needs block-wise scales, got q.block_size=None")
    else:
        if isinstance(bsz, (bool, np.bool_)) or not isinstance(bsz, (int, np.integer)) \
                or bsz < 1:
            raise ValueError(f"q.block_size must be an int >= 1 or None, got {bsz!r}")
        bs = min(int(bsz), d_in)                 # a block longer than d_in is one block
        nb = (d_in + bs - 1) // bs
    data_arr = _array(q.data, "q.data", (np.dtype(np.int8 if bits > 4 else np.uint8),),
                      (int(d_out), int(_rowb(d_in, bits))))
    cdef const uint8_t[:, ::1] data = data_arr.view(np.uint8)
    cdef const float[::1] sc
    cdef const int8_t[::1] codes
    cdef const float[::1] gs
    d.d_in = d_in
    d.d_out = d_out
    d.bits = bits
    d.nf4 = scheme == "nf4"
    d.per_tensor = bsz is None
    d.bs = bs
    d.nb = nb
    d.rowb = data.shape[1]
    d.data = &data[0, 0]
    keep["data"] = data_arr
    d.dq = bool(dq)
    d.scales = NULL
    d.sc_codes = NULL
    d.sc_scales = NULL
    d.sc_mean = 0
    if d.dq:
        count = int(d_out * nb)
        q_codes = _array(q.scale_codes, "q.scale_codes", (np.dtype(np.int8),), (count,))
        q_gs = _array(q.scale_scales, "q.scale_scales", (_F32,), (-(-count // 256),))
        codes = q_codes
        gs = q_gs
        mean = _array(q.scale_mean, "q.scale_mean", (_F32,), ())
        d.sc_codes = &codes[0]
        d.sc_scales = &gs[0]
        d.sc_mean = float(mean)
        keep["codes"] = q_codes
        keep["gs"] = q_gs
    else:
        sc_arr = _array(q.scales, "q.scales", (_F32,), (1,) if bsz is None else
                        (int(d_out), int(nb)))
        sc = sc_arr.reshape(-1)
        d.scales = &sc[0]
        keep["sc"] = sc_arr
    return 0


def dequantize(q, out, int nthreads):
    """out: C-contiguous writeable float32/float64 (d_in, d_out)."""
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep)
    _check_out_array(out, (int(d.d_in), int(d.d_out)), (_F32, _F64), tuple(keep.values()))
    cdef int f64 = out.dtype == np.float64
    cdef uint8_t[::1] ov = out.reshape(-1).view(np.uint8)
    cdef const fdl_qk_kernels *K = fdl_qk_table(simd_level())
    with nogil:
        _dequantize(K, &d, &ov[0], f64, nthreads)
    return out


cdef _check_matmul(x, int64_t d_in, int64_t d_out, bint transpose, out, tuple q_arrays):
    k, m = (int(d_out), int(d_in)) if transpose else (int(d_in), int(d_out))
    if not isinstance(x, np.ndarray) or x.dtype not in (_F32, _F64):
        raise TypeError(f"x must be a float32/float64 numpy.ndarray, got {_desc_of(x)}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != k:
        raise ValueError(f"x must have shape (n, {k}) with n >= 1, got {x.shape}")
    _array(x, "x", (x.dtype,), x.shape)
    _check_out_array(out, (x.shape[0], m), (x.dtype,), (x,) + q_arrays)


def qmatmul(x, q, bint transpose, out, int nthreads, path=None):
    """x (n, k) and out (n, m): C-contiguous, same float dtype, n >= 1, out not
    overlapping x; ``path``: None (choose by n), "small" or "blas" (tests)."""
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep)
    _check_matmul(x, d.d_in, d.d_out, transpose, out, tuple(keep.values()))
    cdef int64_t n = x.shape[0]
    cdef int64_t panel = PARAMS["panel_t" if transpose else "panel"]
    if path is None:
        path = "small" if n <= PARAMS["small_n_t" if transpose else "small_n"] else "blas"
    if path == "blas" and max(n, d.d_in, d.d_out) > INT_MAX:
        path = "small"          # BLAS takes 32-bit ints
    if path not in ("small", "blas"):
        raise ValueError(f"path must be None, 'small' or 'blas', got {path!r}")
    cdef bint small = path == "small"
    # BLAS runs outside any parallel loop, on as many threads as fastdl would use
    cdef int bthreads = 1 if small else _cpu.blas_team(nthreads)
    cdef int blas_old = 0 if small else _cpu.blas_threads(bthreads)
    if blas_old == 0 or PARAMS["decode_team"] == 1:
        bthreads = 1            # (the BLAS's own count unknown): decode on one thread
    try:
        if x.dtype == _F64:
            _qmatmul[double](&d, x, out, transpose, small, nthreads, bthreads, panel)
        else:
            _qmatmul[float](&d, x, out, transpose, small, nthreads, bthreads, panel)
    finally:
        if blas_old:
            _cpu.blas_threads(blas_old)
    return out


def decode_rows(q, int64_t j0, int64_t j1, out, int nthreads):
    """Storage rows j0..j1-1 of q decoded (the panels of the BLAS path; tests and
    benchmarks): out (j1 - j0, d_in) float32/float64 = dequantize(q)[:, j0:j1].T."""
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep)
    if not 0 <= j0 < j1 <= d.d_out:
        raise ValueError(f"need 0 <= j0 < j1 <= d_out={d.d_out}, got j0={j0}, j1={j1}")
    _check_out_array(out, (int(j1 - j0), int(d.d_in)), (_F32, _F64), tuple(keep.values()))
    cdef int f64 = out.dtype == np.float64
    cdef uint8_t[::1] ov = out.reshape(-1).view(np.uint8)
    cdef const fdl_qk_kernels *K = fdl_qk_table(simd_level())
    cdef int64_t jj, sz = 8 if f64 else 4
    cdef int nt = team(nthreads, (j1 - j0) * d.d_in * sz, j1 - j0)
    cdef uint8_t *o = &ov[0]
    for jj in prange(j1 - j0, nogil=True, num_threads=nt, schedule="static"):
        fdl_qk_decode_row(K, &d, j0 + jj, o + jj * d.d_in * sz, f64)
    return out
