"""Int8-activation quantized matmul (Cython backend): ``y = x @ dequantize(q)``
with each row of x quantized in blocks of 32 (llama.cpp's Q8_0) and the products
summed in integers (AVX-512 VNNI, AVX-VNNI, AVX2 or scalar; src/qi8k.h defines the
arithmetic, fastdl/_backends/numpy/quant_int8.py is the readable reference).

x is quantized once per call (parallel over rows).  Given the weights reordered by
``int8_tiles`` (16 columns in the lanes of a register), small n (``PARAMS["small_n"]``)
runs 8 ``vpdpbusd`` per 32-block and column tile, with no reduction across lanes, and
larger n at the AMX tier runs tile products of 16 rows x 16 columns x 32 values
(``tdpbssd``) on them.  Without that copy, small n reads the storage rows directly, 8
columns at a time; larger n unpacks strips of
``PARAMS["strip"]`` columns into int8 units once and runs register tiles of
16 rows x 8 columns (AVX-512; 16 x 2 on AVX2) over a packed copy of x, in chunks of
16 32-blocks so a chunk of x stays in L1.  Both loops are over independent
column groups, so no result depends on the thread count, and every tier follows one
float order, so no result depends on the tier.
"""
from libc.stdint cimport int64_t, uint8_t, int8_t, int32_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, threadid

import numpy as np
from fastdl._backends.cython._qcheck import array as _array, what as _desc_of

from fastdl.quant import QuantizedTensor

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team

from fastdl._backends.cython._quant cimport fdl_qk_desc, _desc as _quant_desc

cdef extern from "qi8k.h" nogil:
    int FDL_QI8_TILE, FDL_QI8_NC, FDL_QI8_GV
    ctypedef struct fdl_qi8_x:
        int64_t n, d_in, kp, nb32
        const int8_t *qx
        const float *dx
        const int32_t *sq
        const uint8_t *xp
        const float *dxp
        int64_t ntile
    ctypedef struct fdl_qi8_w:
        int64_t j0, jw, jwp, kp, nb32, nbw, spb
        int wide
        int8_t *wu
        int32_t *wc
        float *sw
    ctypedef struct fdl_qi8_t:
        int64_t d_out, NT, nb32, nbw, spb
        int wide, off
        const uint8_t *wt
        const float *st
    ctypedef struct fdl_qi8_kernels:
        const char *name
        int64_t (*quant)(const float *x, int64_t r0, int64_t r1, int64_t d_in, int64_t kp,
                         int8_t *qx, float *dx, int32_t *sq) noexcept nogil
        void (*gemv)(const fdl_qk_desc *q, const fdl_qi8_x *X, float *y, int64_t j0,
                     int64_t j1, void *scratch) noexcept nogil
        void (*strip)(const fdl_qi8_x *X, const fdl_qi8_w *W, float *y, int64_t ldy,
                      float *tbuf) noexcept nogil
        void (*tiles)(const fdl_qi8_t *T, const fdl_qi8_x *X, float *y, int64_t t0,
                      int64_t t1) noexcept nogil
        void (*amx)(const fdl_qi8_t *T, const fdl_qi8_x *X, const int8_t *qxp,
                    const float *dxp, float *y, int64_t t0, int64_t t1,
                    void *scratch) noexcept nogil
    int fdl_qi8_best_tier(int simd_level)
    int fdl_qi8_tier_runs(int tier, int simd_level)
    const fdl_qi8_kernels *fdl_qi8_table(int tier)
    void fdl_qi8_xpanel_tile(const fdl_qi8_x *X, int64_t t, uint8_t *xp, float *dxp)
    int64_t fdl_qi8_spb(const fdl_qk_desc *q, int64_t nb32)
    void fdl_qi8_unpack_strip(const fdl_qk_desc *q, fdl_qi8_w *W)
    int64_t fdl_qi8_gemv_scratch(int64_t n, int64_t kp, int64_t nb32, int64_t nbw)
    int64_t fdl_qi8_amx_scratch(int64_t nb32)
    void fdl_qi8_amx_pack_x(const fdl_qi8_x *X, int64_t rt, int8_t *xk, float *dk)
    void fdl_qi8_tiles_init(const fdl_qk_desc *q, const uint8_t *wt, const float *st,
                            fdl_qi8_t *T)
    void fdl_qi8_pack_tile(const fdl_qk_desc *q, int64_t t, uint8_t *wt, float *st,
                           int8_t *tmp)

TIERS = ("scalar", "avx2", "avxvnni", "avx512vnni", "amx")

# small_n: rows up to which the direct (storage rows) kernel runs where the tier has one
# (4096 x 4096, int4 / int8 blocks of 64, one thread, CPU ms direct vs strips: n = 8
# 3.8 / 5.6 and 4.2 / 6.7, n = 12 4.4 / 5.6 and 4.2 / 5.5, n = 16 8.0 / 8.1 and 5.9 / 5.8);
# strip: columns unpacked per strip (a multiple of 8; the strip's units stay in L2)
PARAMS = {"small_n": 12, "strip": 64}
_DEFAULTS = dict(PARAMS)
cdef int _pinned = -1
_F32 = np.dtype(np.float32)


def set_params(**kw):
    """Change tuning constants (tests, benchmarks); returns the previous values."""
    old = {}
    for k, v in kw.items():
        if k not in PARAMS:
            raise ValueError(f"unknown parameter {k!r}; known: {sorted(PARAMS)}")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or \
                (k == "strip" and (v < 8 or v % 8)):
            raise ValueError(f"{k} must be a non-negative int (strip: a multiple of 8 >= 8), "
                             f"got {v!r}")
        old[k] = PARAMS[k]
    PARAMS.update(kw)
    return old


def int8_levels():
    """The int8 tiers this CPU runs at the current SIMD level, lowest first (a pinned
    ``fastdl.testing.simd("avx2")`` level removes the AVX-512 one)."""
    cdef int lv = simd_level()
    return [TIERS[t] for t in range(len(TIERS)) if fdl_qi8_tier_runs(t, lv)]


def set_int8_tier(name):
    """Pin the int8 tier (a name of ``int8_levels()``, or None for the best); returns the
    previous pin.  A pinned tier the current SIMD level excludes runs the best allowed."""
    global _pinned
    old = None if _pinned < 0 else TIERS[_pinned]
    if name is None:
        _pinned = -1
        return old
    if name not in int8_levels():
        raise ValueError(f"int8 tier must be one of {int8_levels()} on this CPU, got {name!r}")
    _pinned = TIERS.index(name)
    return old


cdef int _tier() noexcept:
    cdef int lv = simd_level()
    if _pinned >= 0 and fdl_qi8_tier_runs(_pinned, lv):
        return _pinned
    return fdl_qi8_best_tier(lv)


def active_int8_tier():
    """The tier int8_qmatmul runs now."""
    return TIERS[_tier()]


def cpu_features():
    """{"amx": bool, "avx512vnni": bool, "avxvnni": bool} of this CPU (and OS, for AMX)
    at the current SIMD level."""
    cdef int lv = simd_level()
    return {"amx": bool(fdl_qi8_tier_runs(4, lv)), "avx512vnni": bool(fdl_qi8_tier_runs(3, lv)),
            "avxvnni": bool(fdl_qi8_tier_runs(2, lv))}


# ---------------------------------------------------------------- checks

cdef int _desc(fdl_qk_desc *d, q, dict keep, bint codes_as_absmax) except -1:
    """_quant's checked descriptor of q, with what int8 activations add: integer codes, and
    weight blocks that hold whole 32-value activation blocks."""
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a fastdl.quant.QuantizedTensor, got {type(q).__name__}")
    scheme, bsz = q.scheme, q.block_size
    if scheme == "nf4":
        raise ValueError("activations='int8' needs integer weight codes; NF4 codes are not "
                         "integers: use the exact path (activations='float32') or "
                         "compute='bf16' for NF4 weights")
    if scheme not in ("absmax", "signmax") and not (codes_as_absmax and isinstance(scheme, str)):
        raise ValueError(f"q.scheme must be 'absmax' or 'signmax' for int8 activations "
                         f"(other integer schemes with codes_as_absmax=True), got {scheme!r}")
    _quant_desc(d, q, keep, codes_as_absmax)
    if d.nb > 1 and d.bs % 32:
        raise ValueError(f"int8 activations need q.block_size a multiple of 32, None (per "
                         f"tensor) or >= d_in={d.d_in}, got block_size={bsz}")
    return 0


# ---------------------------------------------------------------- drivers

cdef void *_alloc(size_t nbytes) except NULL:
    cdef void *p = malloc(nbytes if nbytes > 0 else 1)
    if p == NULL:
        raise MemoryError(f"out of memory for {nbytes} bytes of int8 kernel buffers")
    return p


cdef void _strip(const fdl_qi8_kernels *K, const fdl_qk_desc *d, const fdl_qi8_x *X,
                 int64_t s, int64_t CS, int8_t *wu, int32_t *wc, float *sw, float *tb,
                 float *y) noexcept nogil:
    cdef fdl_qi8_w W
    W.j0 = s * CS
    W.jw = min(CS, d.d_out - W.j0)
    W.jwp = (W.jw + FDL_QI8_NC - 1) // FDL_QI8_NC * FDL_QI8_NC
    W.kp = X.kp + 64            # rows 4 KiB apart would share L1 sets
    W.nb32 = X.nb32
    W.nbw = 1 if d.per_tensor else d.nb
    W.spb = fdl_qi8_spb(d, X.nb32)
    W.wide = d.bits > 4
    W.wu = wu
    W.wc = wc
    W.sw = sw
    fdl_qi8_unpack_strip(d, &W)
    K.strip(X, &W, y, d.d_out, tb)


def tiles_run(n):
    """Whether int8_qmatmul of n rows takes reordered weights (int8_tiles) at the current
    tier: its small-n kernel reads them where the tier has one (AVX-512 VNNI), and so do
    the AMX tile products for more rows."""
    cdef const fdl_qi8_kernels *K = fdl_qi8_table(_tier())
    return K.tiles != NULL and (n <= PARAMS["small_n"] or K.amx != NULL)


cdef tuple _tiles_shape(const fdl_qi8_t *T):
    return ((int(T.NT), int(T.nb32 * (512 if T.wide else 256))),
            (int(T.NT), int(T.nbw * 16)))


def int8_tiles(q, int nthreads=1, *, bint codes_as_absmax=False):
    """q's codes and weight scales reordered for the small-n and AMX kernels (src/qi8k.h,
    fdl_qi8_t): (wt uint8, st float32); int8_qmatmul(..., tiles=(wt, st)) reads them.
    As large as the codes (4-bit formats: half a byte per weight) plus 4 bytes per
    weight block."""
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep, codes_as_absmax)
    cdef fdl_qi8_t T
    fdl_qi8_tiles_init(&d, NULL, NULL, &T)
    ws, ss = _tiles_shape(&T)
    wt = np.empty(ws, np.uint8)
    st = np.empty(ss, np.float32)
    cdef uint8_t[:, ::1] wv = wt
    cdef float[:, ::1] sv = st
    cdef int64_t nb32 = T.nb32, t
    cdef int nt = team(nthreads, T.NT * ws[1], T.NT)
    cdef int8_t *tmp = <int8_t *>_alloc(nt * 32 * nb32)
    with nogil:
        for t in prange(T.NT, num_threads=nt, schedule="static"):
            fdl_qi8_pack_tile(&d, t, &wv[0, 0], &sv[0, 0], tmp + threadid() * 32 * nb32)
    free(tmp)
    return wt, st


def int8_qmatmul(x, q, out, int nthreads, path=None, *, bint codes_as_absmax=False,
                 tiles=None):
    """out = x @ dequantize(q) with int8 activations (arithmetic: src/qi8k.h).

    x: float32 C-contiguous (n, d_in), finite; out: float32 C-contiguous writeable
    (n, d_out) not overlapping x; q: a QuantizedTensor, scheme absmax or signmax, bits
    2..8, block size a multiple of 32 / None / >= d_in (double quantization allowed).
    ``path``: None (by n), "gemv", "tiles", "amx" or "strip" (tests; "gemv", "tiles" and
    "amx" need a tier that has them, "tiles" and "amx" the ``tiles`` argument).
    ``tiles``: None, or int8_tiles(q) (then small n, and at the AMX tier larger n, run
    the kernels that read them).
    ``codes_as_absmax``: take the codes of another integer scheme (e.g. minmax) as absmax
    units ``code - 2^(bits-1)`` times the scales, ignoring anything else the scheme adds.
    Returns out.
    """
    cdef fdl_qk_desc d
    cdef dict keep = {}
    _desc(&d, q, keep, codes_as_absmax)
    if not isinstance(x, np.ndarray) or x.dtype != _F32:
        raise TypeError(f"x must be a float32 numpy.ndarray, got {_desc_of(x)}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != d.d_in:
        raise ValueError(f"x must have shape (n, {d.d_in}) with n >= 1, got {x.shape}")
    _array(x, "x", _F32, x.shape)
    _array(out, "out", _F32, (x.shape[0], int(d.d_out)), writeable=True)
    for a in (x,) + tuple(keep.values()):
        if np.may_share_memory(out, a):
            raise ValueError("out must not overlap x or q's arrays")
    if path not in (None, "gemv", "tiles", "amx", "strip"):
        raise ValueError(f"path must be None, 'gemv', 'tiles', 'amx' or 'strip', got {path!r}")
    cdef const fdl_qi8_kernels *K = fdl_qi8_table(_tier())
    if path == "gemv" and K.gemv == NULL:
        raise ValueError(f"the {K.name.decode()} int8 tier has no 'gemv' path")
    if path == "tiles" and (K.tiles == NULL or tiles is None):
        raise ValueError(f"path='tiles' needs the tiles argument and a tier with that path "
                         f"(this is {K.name.decode()})")
    if path == "amx" and (K.amx == NULL or tiles is None):
        raise ValueError(f"path='amx' needs the tiles argument and the amx tier (this is "
                         f"{K.name.decode()})")
    cdef fdl_qi8_t T
    cdef const uint8_t[:, ::1] twv
    cdef const float[:, ::1] tsv
    if tiles is not None:
        if not isinstance(tiles, tuple) or len(tiles) != 2:
            raise TypeError(f"tiles must be the (wt, st) pair int8_tiles returns, got "
                            f"{_desc_of(tiles)}")
        fdl_qi8_tiles_init(&d, NULL, NULL, &T)
        tws, tss = _tiles_shape(&T)
        twv = _array(tiles[0], "tiles[0]", np.uint8, tws)
        tsv = _array(tiles[1], "tiles[1]", _F32, tss)
        for a in tiles:
            if np.may_share_memory(out, a):
                raise ValueError("out must not overlap the tiles")
        T.wt = &twv[0, 0]
        T.st = &tsv[0, 0]
    cdef int64_t n = x.shape[0], d_in = d.d_in, d_out = d.d_out
    cdef int64_t nb32 = (d_in + 31) // 32, kp = 32 * nb32, nbw = 1 if d.per_tensor else d.nb
    cdef bint small = K.gemv != NULL and (path == "gemv" or (path is None and n <= PARAMS["small_n"]))
    cdef bint by_tiles = K.tiles != NULL and tiles is not None and (
        path == "tiles" or (path is None and n <= PARAMS["small_n"]))
    cdef bint by_amx = K.amx != NULL and tiles is not None and (
        path == "amx" or (path is None and n > PARAMS["small_n"]))
    qx = np.empty((n, kp), np.int8)
    dx = np.empty((n, nb32), np.float32)
    sq = np.empty((n, nb32), np.int32)
    cdef const float[:, ::1] xv = x
    cdef int8_t[:, ::1] qxv = qx
    cdef float[:, ::1] dxv = dx
    cdef int32_t[:, ::1] sqv = sq
    cdef float[:, ::1] yv = out
    cdef fdl_qi8_x X
    X.n = n
    X.d_in = d_in
    X.kp = kp
    X.nb32 = nb32
    X.qx = &qxv[0, 0]
    X.dx = &dxv[0, 0]
    X.sq = &sqv[0, 0]
    X.xp = NULL
    X.dxp = NULL
    X.ntile = (n + FDL_QI8_TILE - 1) // FDL_QI8_TILE
    cdef int64_t RC = 16, nrc = (n + RC - 1) // RC, c, bad = 0, g, ng, ss, t, s, nst, CS
    cdef int nt = team(nthreads, n * d_in * 4, nrc)
    for c in prange(nrc, nogil=True, num_threads=nt, schedule="static"):
        bad += K.quant(&xv[0, 0], c * RC, min(n, c * RC + RC), d_in, kp, &qxv[0, 0],
                       &dxv[0, 0], &sqv[0, 0])
    if bad:
        raise ValueError(f"x must be finite: {bad} block(s) of 32 values hold inf or nan")
    cdef char *buf
    cdef uint8_t[::1] xpv
    cdef float[::1] dxpv
    cdef int64_t work = n * d_in * d_out
    cdef int8_t[::1] xkv
    cdef float[::1] dkv
    cdef int64_t nrt = (n + 15) // 16
    if by_amx:
        # x's q per 16-row tile and 32-block: each tile load reads 512 contiguous bytes
        xk = np.empty(nrt * nb32 * 512, np.int8)
        dk = np.empty(nrt * nb32 * 16, np.float32)
        xkv = xk
        dkv = dk
        nt = team(nthreads, n * kp * 2, nrt)
        for t in prange(nrt, nogil=True, num_threads=nt, schedule="static"):
            fdl_qi8_amx_pack_x(&X, t, &xkv[0], &dkv[0])
        ss = (fdl_qi8_amx_scratch(nb32) + 63) // 64 * 64
        nt = team(nthreads, work, T.NT)
        buf = <char *>_alloc(nt * ss)
        with nogil:
            for c in prange(nt, num_threads=nt, schedule="static"):
                K.amx(&T, &X, &xkv[0], &dkv[0], &yv[0, 0], c * T.NT // nt,
                      (c + 1) * T.NT // nt, buf + threadid() * ss)
        free(buf)
        return out
    if by_tiles:
        nt = team(nthreads, work, T.NT)
        with nogil:
            for t in prange(T.NT, num_threads=nt, schedule="static"):
                K.tiles(&T, &X, &yv[0, 0], t, t + 1)
        return out
    if small:
        ng = (d_out + FDL_QI8_GV - 1) // FDL_QI8_GV
        ss = (fdl_qi8_gemv_scratch(n, kp, nb32, nbw) + 63) // 64 * 64
        nt = team(nthreads, work, ng)
        buf = <char *>_alloc(nt * ss)
        with nogil:
            for g in prange(ng, num_threads=nt, schedule="static"):
                K.gemv(&d, &X, &yv[0, 0], g * FDL_QI8_GV, min(d_out, g * FDL_QI8_GV + FDL_QI8_GV),
                       buf + threadid() * ss)
        free(buf)
        return out
    xp = np.empty(X.ntile * nb32 * 512, np.uint8)
    dxp = np.empty(X.ntile * nb32 * 16, np.float32)
    xpv = xp
    dxpv = dxp
    X.xp = &xpv[0]
    X.dxp = &dxpv[0]
    nt = team(nthreads, n * kp * 2, X.ntile)
    for t in prange(X.ntile, nogil=True, num_threads=nt, schedule="static"):
        fdl_qi8_xpanel_tile(&X, t, &xpv[0], &dxpv[0])
    CS = PARAMS["strip"]
    nst = (d_out + CS - 1) // CS
    # per thread: units, corrections, scales, the micro-kernel's output tile
    cdef int64_t o_wc = (CS * (kp + 64) + 63) // 64 * 64
    cdef int64_t o_sw = o_wc + (CS * nb32 * 4 + 63) // 64 * 64
    cdef int64_t o_tb = o_sw + (CS * nbw * 4 + 63) // 64 * 64
    ss = o_tb + (CS + FDL_QI8_NC) * 2 * FDL_QI8_TILE * 4 + 64
    nt = team(nthreads, work, nst)
    buf = <char *>_alloc(nt * ss)
    cdef char *b
    with nogil:
        for s in prange(nst, num_threads=nt, schedule="static"):
            b = buf + threadid() * ss
            _strip(K, &d, &X, s, CS, <int8_t *>b, <int32_t *>(b + o_wc), <float *>(b + o_sw),
                   <float *>(b + o_tb), &yv[0, 0])
    free(buf)
    return out
