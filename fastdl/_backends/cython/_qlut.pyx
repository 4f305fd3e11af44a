"""Lookup-table kernels of ``y = x @ W`` for quantized weights in the "lut" layout
(Cython backend); layout and arithmetic contracts in src/qlutk.h, the NumPy
definition in fastdl/_backends/numpy/quant_lut.py.

``lut_qmatmul`` builds every row's tables once, then the threads take groups of
output column tiles (16 columns each; ``PARAMS["groups"]`` groups per thread) as they
come free, each group through the serial C driver; a tile's sums depend neither on its
group nor on the thread, so no result depends on the thread count.  The SIMD level's
kernel table is fetched once per call.  ``rows_to_lut`` / ``lut_to_rows`` convert between the rows layout of
``fastdl.quant`` and this one, a tile per work unit.

Speed (4096 x 4096, blocks of 64, 2-core AVX-512 Xeon): the AVX-512 kernel issues
about 2.5 vector uops per 16 looked-up weights and row (vpermps, add, half a shift) on
the two 512-bit ports, so it is bound by instructions: about 0.6 ns per 16 weights and
row on one thread; int4 n = 1 on 2 threads best 0.39-0.40 ms, median 0.45-0.57 ms
(NumPy float32 x @ W about 1.4 ms), once the tensor keeps its scales in tile order (``lut_tile_scales``).  Pinned to AVX2
(two vpermps and a blend per 8 columns) it is slower than the rows layout's AVX2 kernel
at every n (n = 1: 3.4 vs 2.9 ms, n = 16: 50 vs 22 ms).
"""
from libc.stdint cimport int64_t, uint8_t, int8_t, uint32_t
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, threadid

import numbers

import numpy as np
from fastdl._backends.cython._qcheck import array as _array, what as _desc_of, dim as _dim

from fastdl.quant import row_bytes

from fastdl._backends.cython._cpu cimport simd_level
from fastdl._backends.cython._cpu cimport team

cdef extern from "qlutk.h" nogil:
    ctypedef struct fdl_qlut_desc:
        int64_t d_in, d_out, NT, NC, cpb, nb, ib
        int bits, nf4, per_tensor, dq
        const uint32_t *lut
        const float *scales
        const int8_t *sc_codes
        const float *sc_scales
        float sc_mean
        const float *tsc
        const float *tabs
    ctypedef struct fdl_qlut_kernels:
        pass
    const fdl_qlut_kernels *fdl_qlut_table(int level)
    int64_t fdl_qlut_scratch(const fdl_qlut_desc *q, int64_t n, int64_t tiles)
    void fdl_qlut_tile_scales(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, int64_t t0,
                              int64_t t1, float *out, float *tmp)
    int64_t fdl_qlut_tab_per_chunk(const fdl_qlut_desc *q)
    void fdl_qlut_tables_rows(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, const float *x,
                              int64_t n, int64_t c0, int64_t c1, float *tabs)
    void fdl_qlut_tiles(const fdl_qlut_kernels *K, const fdl_qlut_desc *q, int64_t n,
                        int64_t t0, int64_t t1, float *y, float *scratch)
    int fdl_qlut_pack_tile(const uint8_t *rows, int64_t rowb, int64_t d_in, int64_t d_out,
                           int bits, int nf4, int64_t t, uint32_t *lut)
    void fdl_qlut_unpack_tile(const uint32_t *lut, int64_t d_in, int64_t d_out, int bits,
                              int nf4, int64_t t, uint8_t *rows, int64_t rowb)

# Chunks of 32 inputs per input block, whose tables stay close while every tile of a
# thread streams its codes for the block (n = 1; halved for n >= 2, where two rows'
# tables are read together).  NF4 reads a 16-float table per input and lookup, so its
# block stays in L1: 16 chunks are 32 KiB (4 / 8 / 16 / 32 chunks at 4096 x 4096, one
# thread, 2-core AVX-512 Xeon: 1.15 / 1.03 / 0.99 / 1.29 ms).  absmax loads its 8
# tables once per chunk for all its planes, so they may sit in L2 and each tile's codes
# stream in one run: 128 chunks (64 KiB) were 0.63 ns per 16 weights against 0.73 at
# 32 (interleaved, tile-ordered scales).
# groups: tile groups per thread.  Taken dynamically, a thread whose core is shared
# (with an OpenBLAS worker spinning after a GEMM, say) takes fewer; against one static
# range per thread, interleaved with NumPy GEMVs: NF4 median 1.05-1.11 vs 1.13-1.20 ms,
# int4 the same within noise
PARAMS = {"ib_nf4": 16, "ib_absmax": 128, "groups": 8}
_DEFAULTS = dict(PARAMS)
_F32 = np.dtype(np.float32)


def set_params(**kw):
    """Change tuning constants (tests, benchmarks); returns the previous values.
    The input blocking never changes a result (the chains carry across blocks)."""
    old = {}
    for k, v in kw.items():
        if k not in PARAMS:
            raise ValueError(f"unknown parameter {k!r}; known: {sorted(PARAMS)}")
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
            raise ValueError(f"{k} must be an int in [1, 4096], got {v!r}")
        old[k] = PARAMS[k]
    PARAMS.update(kw)
    return old


cdef int _format(bits, nf4) except -1:
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, numbers.Integral) \
            or not 2 <= bits <= 4:
        raise ValueError(f"bits must be an int in 2..4 for the lut layout, got {bits!r}")
    if not isinstance(nf4, (bool, np.bool_)):
        raise TypeError(f"nf4 must be a bool, got {nf4!r}")
    if nf4 and bits != 4:
        raise ValueError(f"nf4=True needs bits=4, got {bits}")
    return int(bits)


def lut_shape(d_in, d_out, bits):
    """Shape of the uint8 lut array of a (d_in, d_out) weight: (tiles of 16 columns,
    chunks of 32 inputs * bits * 64 bytes)."""
    cdef int64_t di = _dim(d_in, "d_in"), do = _dim(d_out, "d_out")
    cdef int b = _format(bits, False)
    return (int((do + 15) // 16), int((di + 31) // 32 * b * 64))


def lut_supports(bits, scheme_nf4, block_size):
    """Whether lut_qmatmul takes this format: bits 2..4 (NF4: 4), block_size None
    (per tensor) or a multiple of 32."""
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, numbers.Integral):
        return False
    if not 2 <= bits <= 4 or (bool(scheme_nf4) and bits != 4):
        return False
    if block_size is None:
        return True
    return (not isinstance(block_size, (bool, np.bool_)) and isinstance(block_size, numbers.Integral)
            and block_size >= 32 and block_size % 32 == 0)


def rows_to_lut(data_rows, d_in, d_out, bits, nf4, int nthreads=1):
    """The lut layout (uint8, lut_shape(d_in, d_out, bits)) of rows-layout codes
    ``data_rows`` (uint8 (d_out, row_bytes(d_in))); absmax codes must be < 2**bits."""
    cdef int64_t di = _dim(d_in, "d_in"), do = _dim(d_out, "d_out")
    cdef int b = _format(bits, nf4), f = bool(nf4)
    cdef int64_t rowb = row_bytes(di)
    _array(data_rows, "data_rows", np.uint8, (int(do), int(rowb)))
    shape = lut_shape(di, do, b)
    out = np.empty(shape, np.uint8)
    cdef const uint8_t[:, ::1] rv = data_rows
    cdef uint32_t[:, ::1] ov = out.view(np.uint32)
    cdef int64_t NT = shape[0], t
    cdef int bad = 0
    cdef int nt = team(nthreads, di * do, NT)
    for t in prange(NT, nogil=True, num_threads=nt, schedule="static"):
        bad += fdl_qlut_pack_tile(&rv[0, 0], rowb, di, do, b, f, t, &ov[0, 0])
    if bad:
        raise ValueError(f"data_rows holds codes >= 2**bits = {1 << b} (not {b}-bit absmax codes)")
    return out


def lut_to_rows(lut, d_in, d_out, bits, nf4, int nthreads=1):
    """The rows layout (uint8 (d_out, row_bytes(d_in)), fastdl.quant) of a lut array."""
    cdef int64_t di = _dim(d_in, "d_in"), do = _dim(d_out, "d_out")
    cdef int b = _format(bits, nf4), f = bool(nf4)
    shape = lut_shape(di, do, b)
    _array(lut, "lut", np.uint8, shape)
    cdef int64_t rowb = row_bytes(di)
    out = np.empty((int(do), int(rowb)), np.uint8)
    cdef const uint32_t[:, ::1] lv = lut.view(np.uint32)
    cdef uint8_t[:, ::1] ov = out
    cdef int64_t NT = shape[0], t
    cdef int nt = team(nthreads, di * do, NT)
    for t in prange(NT, nogil=True, num_threads=nt, schedule="static"):
        fdl_qlut_unpack_tile(&lv[0, 0], di, do, b, f, t, &ov[0, 0], rowb)
    return out


cdef list _fill_desc(fdl_qlut_desc *d, lut, d_in, d_out, bits, nf4, block_size, scales,
                     scale_codes, scale_scales, scale_mean):
    """Check the weight arguments and fill d (all but ib); the arrays d points into."""
    cdef int64_t di = _dim(d_in, "d_in"), do = _dim(d_out, "d_out"), bs, nb = 1
    cdef int b = _format(bits, nf4)
    shape = lut_shape(di, do, b)
    _array(lut, "lut", np.uint8, shape)
    d.per_tensor = block_size is None
    d.dq = scale_codes is not None
    keep = [lut]
    if d.per_tensor:
        if d.dq:
            raise ValueError("double-quantized scales need a block_size, got block_size=None")
        bs = di
    else:
        if not lut_supports(b, nf4, block_size):
            raise ValueError(f"block_size must be None or a multiple of 32, got {block_size!r}")
        bs = min(int(block_size), di)
        nb = (di + bs - 1) // bs
    cdef int64_t count = do * nb
    cdef const float[::1] sv
    cdef const int8_t[::1] cv
    cdef const float[::1] gv
    d.scales = NULL
    d.sc_codes = NULL
    d.sc_scales = NULL
    d.sc_mean = 0
    d.tsc = NULL
    d.tabs = NULL
    if d.dq:
        if scales is not None:
            raise ValueError("give either scales or the double-quantized scale_* arrays")
        cv = _array(scale_codes, "scale_codes", np.int8, (int(count),))
        gv = _array(scale_scales, "scale_scales", _F32, (int((count + 255) // 256),))
        mean = np.asarray(scale_mean)
        if mean.dtype != _F32 or mean.shape != ():
            raise TypeError(f"scale_mean must be a float32 scalar, got {_desc_of(scale_mean)}")
        d.sc_codes = &cv[0]
        d.sc_scales = &gv[0]
        d.sc_mean = float(mean)
        keep += [scale_codes, scale_scales]
    else:
        sa = _array(scales, "scales", _F32, (1,) if d.per_tensor else (int(do), int(nb)))
        sv = sa.reshape(-1)
        d.scales = &sv[0]
        keep.append(scales)
    cdef const uint32_t[:, ::1] lv = lut.view(np.uint32)
    d.d_in = di
    d.d_out = do
    d.NT = shape[0]
    d.NC = (di + 31) // 32
    d.nb = nb
    d.cpb = d.NC if nb == 1 else bs // 32
    d.bits = b
    d.nf4 = bool(nf4)
    d.ib = 1
    d.lut = &lv[0, 0]
    return keep


def lut_tile_scales(lut, d_in, d_out, bits, nf4, block_size, scales, scale_codes,
                    scale_scales, scale_mean, int nthreads=1):
    """The block scales decoded (as the rows layout decodes them) and put in the order
    lut_qmatmul reads them: float32 (tiles, nblocks * 16), row t = for each block, the
    16 columns of tile t (0 past d_out).  lut_qmatmul(..., tile_scales=this) then reads
    them instead of decoding them on every call; the arguments are lut_qmatmul's."""
    cdef fdl_qlut_desc d
    _fill_desc(&d, lut, d_in, d_out, bits, nf4, block_size, scales, scale_codes,
               scale_scales, scale_mean)
    out = np.empty((int(d.NT), int(d.nb * 16)), _F32)
    cdef float[:, ::1] ov = out
    cdef const fdl_qlut_kernels *K = fdl_qlut_table(simd_level())
    cdef int nt = team(nthreads, d.NT * d.nb * 16, d.NT)
    cdef int64_t t
    cdef float *tmp = <float *>malloc(nt * d.nb * sizeof(float))
    if tmp == NULL:
        raise MemoryError(f"lut_tile_scales: out of memory for {nt * d.nb * 4} bytes")
    for t in prange(d.NT, nogil=True, num_threads=nt, schedule="static"):
        fdl_qlut_tile_scales(K, &d, t, t + 1, &ov[t, 0], tmp + threadid() * d.nb)
    free(tmp)
    return out


def lut_qmatmul(x, lut, d_in, d_out, bits, nf4, block_size, scales, scale_codes, scale_scales,
                scale_mean, out, int nthreads, tile_scales=None):
    """out[:] = x @ W for W in the lut layout; x float32 (n, d_in), out float32
    (n, d_out), both C-contiguous.  Scales as fastdl.quant stores them: ``scales``
    float32 (1,) with block_size None, else (d_out, nblocks); or, block-wise,
    scales None and the double-quantized scale_codes int8 (d_out*nblocks,),
    scale_scales float32 (ceil(d_out*nblocks/256),), scale_mean float32.
    ``tile_scales``: None, or lut_tile_scales of the same arguments (then the scales
    are read from it, not decoded per call)."""
    cdef fdl_qlut_desc d
    keep = _fill_desc(&d, lut, d_in, d_out, bits, nf4, block_size, scales, scale_codes,
                      scale_scales, scale_mean)
    cdef int64_t di = d.d_in, do = d.d_out
    if not isinstance(x, np.ndarray) or x.dtype != _F32:
        raise TypeError(f"x must be a float32 numpy.ndarray, got {_desc_of(x)}")
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != di:
        raise ValueError(f"x must have shape (n, {di}) with n >= 1, got {x.shape}")
    _array(x, "x", _F32, x.shape)
    cdef int64_t n = x.shape[0]
    _array(out, "out", _F32, (int(n), int(do)), writeable=True)
    cdef const float[:, ::1] tv
    if tile_scales is not None:
        tv = _array(tile_scales, "tile_scales", _F32, (int(d.NT), int(d.nb * 16)))
        d.tsc = &tv[0, 0]
        keep.append(tile_scales)
    keep.append(x)
    for a in keep:
        if np.may_share_memory(out, a):
            raise ValueError("out must not overlap the input arrays")
    cdef const float[:, ::1] xv = x
    cdef float[:, ::1] yv = out
    d.ib = PARAMS["ib_nf4" if nf4 else "ib_absmax"]
    if n >= 2:
        d.ib = max(1, d.ib // 2)
    cdef const fdl_qlut_kernels *K = fdl_qlut_table(simd_level())
    cdef int nt = team(nthreads, d.NT * (d.NC * d.bits * 64), d.NT)
    # every row's tables once, shared by the threads; then groups of tiles taken as the
    # threads come free (a core shared with another busy thread, an OpenBLAS worker
    # spinning after a GEMM say, takes fewer groups instead of holding the others up);
    # a tile's sums do not depend on its group
    cdef int64_t tpc = fdl_qlut_tab_per_chunk(&d), g
    cdef int64_t gpt = PARAMS["groups"]
    cdef int64_t tg = max(2, (d.NT + gpt * nt - 1) // (gpt * nt))
    tg += tg % 2                              # NF4 runs tiles in pairs
    cdef int64_t ng = (d.NT + tg - 1) // tg
    cdef int64_t tsz = n * d.NC * tpc
    cdef float *tabs = <float *>malloc(tsz * sizeof(float))
    if tabs == NULL:
        raise MemoryError(f"lut_qmatmul: out of memory for {tsz * 4} bytes of tables")
    with nogil:
        fdl_qlut_tables_rows(K, &d, &xv[0, 0], n, 0, d.NC, tabs)
    d.tabs = tabs
    cdef int64_t sz = fdl_qlut_scratch(&d, n, tg)
    cdef float *buf = <float *>malloc(nt * sz * sizeof(float))
    if buf == NULL:
        free(tabs)
        raise MemoryError(f"lut_qmatmul: out of memory for {nt * sz * 4} bytes of work buffers")
    for g in prange(ng, nogil=True, num_threads=nt, schedule="dynamic"):
        fdl_qlut_tiles(K, &d, n, g * tg, min(d.NT, g * tg + tg), &yv[0, 0],
                       buf + threadid() * sz)
    free(buf)
    free(tabs)
    return out
