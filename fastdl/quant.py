"""Quantized weights: int2..int8 absmax and NF4, packed, with fused
dequantize-matmul.

A weight ``w`` has shape ``(d_in, d_out)`` (a layer computes ``Y = X W``).
Scales run in blocks along ``d_in`` for each output column; the last block of
a column is short when ``block_size`` does not divide ``d_in``.

Storage (what ``QuantizedTensor`` holds; backends read it as is):

* ``data``: one row per output column ``j`` (``W[:, j]``), i.e. the transposed
  layout of ``W``, so a matrix-vector product streams each row once.
  - bits 5..8: int8 ``(d_out, d_in)``, the signed integer ``q``.
  - bits 2..4: uint8 ``(d_out, row_bytes)``, two codes per byte.  The code is
    ``q + 2^(bits-1)`` (absmax) or the codebook index (NF4).  Nibble order:
    a row is cut in groups of 64 values (the last group of ``g`` values is
    short); in a full group byte ``i`` (0..31) holds value ``i`` in its low
    nibble and value ``i + 32`` in its high nibble; in the short group, with
    ``h = ceil(g / 2)``, byte ``i`` holds value ``i`` (low) and value ``i + h``
    (high; 0 when ``i + h >= g``).  ``row_bytes = 32*(d_in//64) + ceil((d_in % 64)/2)``.
* ``scales``: float32 ``(d_out, nblocks)``, ``nblocks = ceil(d_in / block_size)``
  (a block size above d_in is one block per column); a per-tensor scale
  (``block_size=None``, any scheme) is one float32, shape ``(1,)``.
* double quantization (``double_quant=True``, block-wise only): instead of
  ``scales``, ``scale_codes`` int8 ``(d_out * nblocks,)`` (scales in row-major
  order, minus their mean, in groups of 256 quantized to 8-bit absmax),
  ``scale_scales`` float32 ``(ceil(d_out*nblocks / 256),)`` and ``scale_mean``
  float32.  The scale of block ``b`` of column ``j`` (flat index ``u = j*nblocks + b``)
  is ``float32(float32(scale_codes[u]) * scale_scales[u // 256]) + scale_mean``,
  clamped to [0, float32 max] (a block whose scale is below the group's step
  rebuilds as 0 rather than with a flipped sign).

Values (all arithmetic in float32; ``w`` is rounded to float32 first):

* absmax: the scale Δ is ``absmax / qmax`` (``qmax = 2^(bits-1) - 1``)
  rounded to the largest float32 not above it, so the block maximum gets
  exactly ``±qmax`` and ``qmax * Δ`` never overflows; ``q = rounding(w / Δ)``
  (float32 quotient) clipped to ``±qmax``, with ``floor`` or ``nearest`` (half
  away from zero); an all-zero block has Δ = 0 and q = 0.  Dequantized:
  ``Δ * q``.  ``block_size=None, rounding="floor"`` is the textbook
  W̃ = ⌊W/Δ⌋, Δ = max|W| / (2^(m-1) - 1).  Blocks whose absmax is subnormal
  (below 2^-126 · qmax) get a subnormal Δ with fewer significant bits; there
  the ±Δ/2 bound of "nearest" is not guaranteed (values stay finite, with
  their sign, and within the block's absmax).
* NF4: scale ``s`` = absmax of the block (of the tensor per tensor); the code of ``w`` is the nearest
  codebook entry to ``w / s`` (ties to the lower code); dequantized:
  ``s * NF4_CODEBOOK[code]``.
* signmax (llama.cpp's Q4_0 rule for any bits): ``mx`` = the block's value of largest
  magnitude, with its sign; ``d = mx / -2^(bits-1)`` (so ``mx`` gets the code of
  ``-2^(bits-1)`` and all 2^bits levels are used; d is negative when mx is positive);
  ``q = min(2^(bits-1) - 1, trunc(w * (1/d) + 2^(bits-1) + 0.5) - 2^(bits-1))``, the float32
  arithmetic of llama.cpp.  Stored exactly as absmax (codes ``q + 2^(bits-1)``, int8 q);
  dequantized: ``d * q``.
* minmax (llama.cpp's Q4_1 rule): ``m`` = the block minimum, ``d = (max - m) / (2^bits - 1)``,
  ``code = clip(trunc((w - m) * (1/d) + 0.5), 0, 2^bits - 1)``; ``mins`` holds m beside
  ``scales``; bits 2..4 store the code itself, bits 5..8 the int8 ``code - 2^(bits-1)``;
  dequantized: ``d * code + m`` (the product rounded to float32, then the sum).
* ``scale_dtype="float16"`` (signmax, minmax, and GGUF imports): d and m are computed in
  float32 and stored rounded to float16 (the codes come from the float32 d, as llama.cpp
  does); the arrays stay float32 in memory, ``nbytes`` counts 2 bytes each.
* ``layout="lut"`` (2..4 bits): the same codes in the order of the lookup-table kernels
  (``fastdl._backends.numpy.quant_lut`` defines it); ``to_layout`` converts either way.

The ops (quantize, dequantize, qmatmul), their arguments and results are
declared in ``fastdl.ops.quant`` (``print(fastdl.ops.table("quant"))``); every
backend's functions run behind that one check of what the kernels rely on.
"""
from __future__ import annotations

import numpy as np

from fastdl import _qlayout, _qpaths
from fastdl import ops as _ops
from fastdl._qformat import (DEFAULT_BLOCK, DQ_GROUP, LAYOUTS, NF4_CODEBOOK, ROUNDINGS,
                             SCALE_DTYPES, SCHEMES, check_finite_scales as _check_finite,
                             check_format, dq_scales as _dq_scales, nblocks, nf4_thresholds,
                             row_bytes, storage_bytes)
from fastdl._qtensor_io import TensorIO
from fastdl._validate import MissingInstructionError, check_int, check_out, reject_masked

__all__ = ["QuantizedTensor", "quantize", "dequantize", "qmatmul", "storage_bytes", "row_bytes",
           "NF4_CODEBOOK", "QUANT_OPS", "SCHEMES", "ROUNDINGS", "SCALE_DTYPES", "LAYOUTS",
           "ACTIVATIONS", "COMPUTES", "MissingInstructionError", "nf4_thresholds"]

QUANT_OPS = tuple(op.name for op in _ops.QUANT_OPS)
ACTIVATIONS = (None, "int8")
COMPUTES = (None, "bf16")
_check_format = check_format


class QuantizedTensor(TensorIO):
    """A quantized ``(d_in, d_out)`` weight; immutable (its arrays are read-only).

    ``shape``, ``bits``, ``scheme``, ``block_size`` (None: one scale for the
    tensor), ``rounding``, ``double_quant``, ``scale_dtype`` ('float32' or 'float16':
    the precision the scales are stored in; ``scales`` is float32 either way),
    ``layout`` ('rows' or 'lut'), ``data``, ``scales`` (None with double
    quantization), ``mins`` (scheme 'minmax': the block minimums, else None),
    ``scale_codes`` / ``scale_scales`` / ``scale_mean`` (double quantization),
    ``nbytes`` (real storage: codes + scales + minimums), ``bits_per_param``;
    ``dequantize()``, ``block_scales()``, ``to_layout(layout)``, ``save(path)``,
    ``QuantizedTensor.load(path)``.  ``x @ q`` is ``qmatmul(x, q)`` (x of shape
    ``(*, d_in)``), ``q @ y`` is ``dequantize(q) @ y`` computed the same way, and
    ``np.asarray(q)`` is ``q.dequantize()`` (float32, a new array).  The storage
    format is in this module's docstring.  ``QuantizedTensor.from_bnb(weight,
    quant_state)`` / ``q.to_bnb()``: bitsandbytes 4-bit NF4 weights as Hugging Face
    checkpoints store them; ``QuantizedTensor.from_gguf(data, type_name, shape)`` /
    ``q.to_gguf()``: llama.cpp's Q4_0, Q4_1 and Q8_0 blocks.
    """

    __slots__ = ("shape", "bits", "scheme", "block_size", "rounding", "double_quant",
                 "scale_dtype", "layout", "data", "scales", "mins", "scale_codes",
                 "scale_scales", "scale_mean", "_bnb", "_twin", "_derived", "_frozen")

    def __init__(self, shape, bits, scheme, block_size, rounding, data, scales=None, *,
                 mins=None, scale_codes=None, scale_scales=None, scale_mean=None,
                 scale_dtype="float32", layout="rows", _copy=True, _bnb=None):
        d_in, d_out = (check_int(s, "shape entries", minimum=1) for s in shape)
        bits = check_int(bits, "bits", minimum=2)
        _check_format(bits, scheme, block_size, rounding, scale_codes is not None, scale_dtype,
                      layout)
        self._set("shape", (d_in, d_out))
        self._set("bits", bits)
        self._set("scheme", scheme)
        self._set("block_size", None if block_size is None else int(block_size))
        self._set("rounding", rounding)
        self._set("double_quant", scale_codes is not None)
        self._set("scale_dtype", scale_dtype)
        self._set("layout", layout)
        nb = self.nblocks
        if layout == "lut":
            want = ("data", np.uint8, _qlayout.lut_shape(d_in, d_out, bits))
        elif bits <= 4:
            want = ("data", np.uint8, (d_out, row_bytes(d_in)))
        else:
            want = ("data", np.int8, (d_out, d_in))
        self._set("data", _frozen_array(data, *want, copy=_copy))
        sshape = (1,) if block_size is None else (d_out, nb)
        if (mins is None) == (scheme == "minmax"):
            raise ValueError("scheme 'minmax' needs its block minimums (mins) and the other "
                             f"schemes take none; got scheme={scheme!r}, mins "
                             f"{'absent' if mins is None else 'given'}")
        self._set("mins", None if mins is None else
                  _frozen_array(mins, "mins", np.float32, sshape, copy=_copy))
        if scale_codes is None:
            self._set("scales", _frozen_array(scales, "scales", np.float32, sshape, copy=_copy))
            for name in ("scale_codes", "scale_scales", "scale_mean"):
                self._set(name, None)
        else:
            if scales is not None:
                raise ValueError("give either scales or the double-quantized scale_* arrays")
            count = d_out * nb
            self._set("scales", None)
            self._set("scale_codes", _frozen_array(scale_codes, "scale_codes", np.int8, (count,)))
            self._set("scale_scales", _frozen_array(scale_scales, "scale_scales", np.float32,
                                                    (-(-count // DQ_GROUP),)))
            self._set("scale_mean", _frozen_array(scale_mean, "scale_mean", np.float32, ()))
        if scale_dtype == "float16":
            for name in ("scales", "mins"):
                a = getattr(self, name)
                if a is not None and not np.array_equal(
                        a.astype(np.float16).astype(np.float32), a, equal_nan=True):
                    raise ValueError(f"scale_dtype='float16' needs {name} that float16 holds "
                                     "exactly; round them to float16 first")
        self._set("_bnb", _bnb)             # what from_bnb read beyond the scales, for to_bnb
        self._set("_twin", None)            # a LUT tensor's rows form, once a product needs it
        self._set("_derived", {})           # small arrays products reuse (fastdl._qpaths)
        self._set("_frozen", True)

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def _fields(self) -> tuple:
        kw = dict(scale_dtype=self.scale_dtype, layout=self.layout)
        if self.mins is not None:
            kw["mins"] = self.mins
        if self.double_quant:
            kw = dict(scale_codes=self.scale_codes, scale_scales=self.scale_scales,
                      scale_mean=self.scale_mean)
        if self._bnb is not None:
            kw["_bnb"] = self._bnb
        return (self.shape, self.bits, self.scheme, self.block_size, self.rounding, self.data,
                self.scales, kw)

    def __reduce__(self):                   # copy, deepcopy and pickle rebuild through __init__
        return _rebuild, self._fields()

    def __copy__(self):
        return self                          # immutable: a copy may be the object itself

    def __setattr__(self, name, value):
        raise AttributeError(f"QuantizedTensor is immutable (cannot set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"QuantizedTensor is immutable (cannot delete {name!r})")

    @property
    def nblocks(self) -> int:
        """Scale blocks per output column (1 for a per-tensor scale)."""
        return nblocks(self.shape[0], self.block_size)

    @property
    def nbytes(self) -> int:
        return storage_bytes(self.shape, self.bits, self.block_size, self.double_quant,
                             scheme=self.scheme, scale_dtype=self.scale_dtype)

    @property
    def bits_per_param(self) -> float:
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])

    def block_scales(self) -> np.ndarray:
        """float32 (d_out, nblocks) scales (dequantized when double-quantized;
        per-tensor: (1, 1))."""
        if not self.double_quant:
            return self.scales.reshape(-1, 1) if self.block_size is None else self.scales
        groups = np.repeat(self.scale_scales, DQ_GROUP)[:self.scale_codes.size]
        with np.errstate(over="ignore"):
            s = self.scale_codes.astype(np.float32) * groups + self.scale_mean
        # clamped to [0, float32 max]: a rebuilt scale must not flip a block's sign
        s = np.clip(s, 0, np.finfo(np.float32).max).astype(np.float32)
        return s.reshape(self.shape[1], self.nblocks)

    def dequantize(self, dtype=None, *, backend: str | None = None) -> np.ndarray:
        return dequantize(self, dtype=dtype, backend=backend)

    def to_layout(self, layout: str) -> "QuantizedTensor":
        """The same tensor with its codes in ``layout``: 'rows' (one packed row per output
        column: every path reads it) or 'lut' (2..4-bit codes in tiles of 16 columns,
        the order the lookup-table kernels of one- to few-row products stream).
        Values, scales and results do not change; ``self`` when already there.  A LUT
        tensor keeps the rows form it makes (products the LUT kernels do not run, such
        as many rows or ``transpose=True``, use it), so that costs the codes' bytes
        once more."""
        from fastdl._validate import check_choice
        check_choice(layout, "layout", LAYOUTS)
        if layout == self.layout:
            return self
        if layout == "rows" and self._twin is not None:
            return self._twin
        d_in, d_out = self.shape
        nf4 = self.scheme == "nf4"
        if layout == "lut":
            check_format(self.bits, self.scheme, self.block_size, self.rounding,
                         self.double_quant, self.scale_dtype, "lut")
            data = _qlayout.to_lut(self.data, d_in, d_out, self.bits, nf4)
        else:
            data = _qlayout.to_rows(self.data, d_in, d_out, self.bits, nf4)
        shape, bits, scheme, bs, rounding, _, scales, kw = self._fields()
        kw["layout"] = layout
        out = QuantizedTensor(shape, bits, scheme, bs, rounding, data, scales, _copy=False, **kw)
        if layout == "rows":
            self._set("_twin", out)     # kept: converting the bit planes back costs ~4 ns a code
        return out

    def block_mins(self) -> np.ndarray | None:
        """float32 (d_out, nblocks) block minimums of scheme 'minmax' (per tensor: (1, 1));
        None for the other schemes."""
        if self.mins is None:
            return None
        return self.mins.reshape(-1, 1) if self.block_size is None else self.mins

    def __repr__(self):
        bs = "tensor" if self.block_size is None else self.block_size
        dq = ", double_quant" if self.double_quant else ""
        f16 = ", float16 scales" if self.scale_dtype == "float16" else ""
        lut = ", lut layout" if self.layout == "lut" else ""
        fmt = "nf4" if self.scheme == "nf4" else f"int{self.bits} {self.scheme}"
        return (f"QuantizedTensor(shape={self.shape}, {fmt}, block={bs}{dq}{f16}{lut}, "
                f"{self.bits_per_param:.3f} bits/param)")

    # ------------------------------------------------------------ files

    # ------------------------------------------------------------ NumPy protocols

    __array_ufunc__ = None      # NumPy defers ``x @ q`` (and other operators) to q

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(q)``: the dequantized float32 matrix (a new array each time, so
        ``copy=False`` is an error)."""
        if copy is False:
            raise ValueError("np.asarray(q, copy=False): dequantizing always makes a new "
                             "array; call q.dequantize() or allow a copy")
        dt = np.dtype(np.float32 if dtype is None else dtype)
        out = dequantize(self, np.float64 if dt == np.float64 else np.float32)
        return out if out.dtype == dt else out.astype(dt)

    def __rmatmul__(self, x):
        """``x @ q`` = ``x @ q.dequantize()`` for x of shape ``(*, d_in)``: ``qmatmul(x, q)``."""
        if isinstance(x, QuantizedTensor):
            return NotImplemented
        return qmatmul(x, self)

    def __matmul__(self, y):
        """``q @ y`` = ``q.dequantize() @ y`` for y of shape ``(d_out,)`` or
        ``(*, d_out, n)``, through ``qmatmul(..., transpose=True)``."""
        if isinstance(y, QuantizedTensor):
            return NotImplemented
        y = _plain(y, "y")
        if y.ndim == 1:
            return qmatmul(y, self, transpose=True)
        if y.ndim == 0 or y.shape[-2] != self.shape[1]:
            raise ValueError(f"q of shape {self.shape} cannot be multiplied with y of shape "
                             f"{y.shape}: y needs shape ({self.shape[1]},) or "
                             f"(..., {self.shape[1]}, n)")
        return np.swapaxes(qmatmul(np.swapaxes(y, -1, -2), self, transpose=True), -1, -2)


def _rebuild(shape, bits, scheme, block_size, rounding, data, scales, kw):
    return QuantizedTensor(shape, bits, scheme, block_size, rounding, data, scales, **kw)


def _frozen_array(a, name, dtype, shape, copy=True) -> np.ndarray:
    """A read-only view of a read-only array (the view's WRITEABLE flag cannot be set
    back); a copy unless ``copy=False`` (arrays fresh from a kernel, owned by nobody else)."""
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.shape != tuple(shape):
        raise ValueError(f"{name} must be a {np.dtype(dtype)} array of shape {tuple(shape)}, "
                         f"got {getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    base = np.array(a, order="C", copy=True) if copy or not a.flags.c_contiguous else a
    owner = base
    while isinstance(owner.base, np.ndarray):       # a kernel's array may be a view: lock its owner
        owner = owner.base
    owner.setflags(write=False)
    base.setflags(write=False)
    return base.view()


# ---------------------------------------------------------------- functions

def _plain(a, name) -> np.ndarray:
    """``a`` as a plain ndarray: backends get no subclass (np.matrix, np.memmap) whose
    operators could change their results; masked arrays are refused, since the kernels
    would read masked entries as data."""
    reject_masked(a, name)
    try:
        return np.asarray(a)
    except Exception as exc:  # noqa: BLE001 - ragged lists and the like
        raise ValueError(f"{name} must be an array of real numbers: {exc}") from None


def _weights(w) -> tuple[np.ndarray, np.ndarray]:
    """(w as a plain ndarray, w as C-contiguous float32)."""
    w = _plain(w, "w")
    if w.dtype.kind not in "biuf":
        raise ValueError(f"w must have a real dtype, got {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D (d_in, d_out), got shape {w.shape}")
    if w.size == 0:
        raise ValueError(f"w must not be empty, got shape {w.shape}")
    with np.errstate(over="ignore"):
        return w, np.ascontiguousarray(w, dtype=np.float32)


def quantize(w, bits, *, scheme="absmax", block_size=DEFAULT_BLOCK, rounding="nearest",
             double_quant=False, scale_dtype="float32", layout="rows",
             backend: str | None = None) -> QuantizedTensor:
    """Quantize a ``(d_in, d_out)`` weight (see the module docstring for the format).

    ``block_size`` (default 64, every scheme): one scale per block of that many
    values along ``d_in`` in each output column, so one outlier only coarsens its
    own block; ``None``: one scale for the whole tensor.  ``scheme="absmax"``:
    ``bits`` 2..8, ``rounding`` "nearest" (half away from zero) or "floor";
    ``quantize(w, m, block_size=None, rounding="floor")`` is exactly
    W̃ = ⌊W/Δ⌋, Δ = max|W| / (2^(m-1) - 1).  ``scheme="nf4"``: QLoRA's
    NormalFloat4 (bits=4; codes are the nearest codebook entry, so
    ``rounding="floor"`` is an error).  ``scheme="signmax"``: all 2^bits levels,
    the block's largest-magnitude value maps to -2^(bits-1) (llama.cpp's Q4_0 rule,
    bits 2..8); ``scheme="minmax"``: ``min + d * code`` with code 0..2^bits-1 from the
    block's minimum to its maximum (llama.cpp's Q4_1 rule).  ``double_quant``:
    quantize the block scales too (8-bit, groups of 256), as QLoRA does (absmax and
    nf4).  ``scale_dtype``: 'float32' or 'float16' (signmax and minmax; with blocks of
    32, 4 bits and float16 scales they are GGUF's Q4_0 and Q4_1, 4.5 and 5 bits a
    weight).  ``layout``: 'rows' (default) or 'lut', the order of the 2..4-bit codes
    that the lookup-table kernels of one- to 16-row products stream (fastest for
    token-by-token decoding; other products convert back per call).
    """
    bits = check_int(bits, "bits")
    if not isinstance(double_quant, (bool, np.bool_)):
        raise ValueError(f"double_quant must be a bool, got {double_quant!r}")
    _check_format(bits, scheme, block_size, rounding, bool(double_quant), scale_dtype, layout)
    if scale_dtype == "float16" and scheme not in ("signmax", "minmax") and \
            not (scheme == "absmax" and bits == 8):
        raise ValueError(f"scale_dtype='float16' applies to schemes 'signmax' and 'minmax' and "
                         f"to 8-bit absmax (llama.cpp's rules, which round their scales to "
                         f"float16), got {bits}-bit {scheme!r}")
    w, w32 = _weights(w)
    d_in, d_out = w32.shape
    bs = d_in if block_size is None else min(int(block_size), d_in)   # a block >= d_in: one
    mins = None
    if scheme in ("signmax", "minmax") or scale_dtype == "float16":
        # llama.cpp's block rules (NumPy; 8-bit absmax with float16 scales is its Q8_0)
        from fastdl._backends.numpy import quant_schemes
        if scheme == "absmax":
            data, scales = quant_schemes.quantize_q8_0(w32, block_size, scale_dtype)
        else:
            data, scales, mins = quant_schemes.quantize_scheme(w32, bits, scheme, block_size,
                                                               scale_dtype)
        scales = np.asarray(scales, np.float32)
        _check_finite(w, scales if mins is None else np.concatenate(
            [scales.reshape(-1), np.asarray(mins, np.float32).reshape(-1)]))
        if mins is not None:
            mins = np.asarray(mins, np.float32)
    else:
        data, scales = _ops.quantize(w32, bits, scheme, bs, rounding, block_size is None,
                                     backend=backend)
        _check_finite(w, scales)
    if block_size is None:
        scales = np.asarray(scales, np.float32).reshape(1)
        mins = None if mins is None else mins.reshape(1)
    bsz = None if block_size is None else int(block_size)
    # the backend's fresh arrays become the tensor's own (no copy)
    if double_quant:
        codes, groups, mean = _dq_scales(scales)
        q = QuantizedTensor((d_in, d_out), bits, scheme, bsz, rounding, data,
                            scale_codes=codes, scale_scales=groups, scale_mean=mean,
                            _copy=False)
    else:
        q = QuantizedTensor((d_in, d_out), bits, scheme, bsz, rounding, data, scales, mins=mins,
                            scale_dtype=scale_dtype, _copy=False)
    return q.to_layout(layout)


def _q(q):
    if not isinstance(q, QuantizedTensor):
        raise TypeError(f"q must be a fastdl.quant.QuantizedTensor, got {type(q).__name__}")
    return q


def dequantize(q, dtype=None, *, out=None, backend: str | None = None) -> np.ndarray:
    """The float ``(d_in, d_out)`` matrix of ``q``: float32 (default), float64, or the
    dtype of ``out``."""
    q = _q(q)
    if dtype is None:
        dtype = out.dtype if isinstance(out, np.ndarray) else np.float32
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    out = check_out(out, "out", q.shape, dtype)
    if out is not None and not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if out is None:
        out = np.empty(q.shape, dtype)
    if q.scheme == "minmax":
        out[...] = _qpaths.minmax_values(q)
        return out
    return _ops.dequantize(_qpaths.kernel_view(q), out, backend=backend)


def qmatmul(x, q, *, transpose: bool = False, activations=None, compute=None, out=None,
            backend: str | None = None):
    """``x @ dequantize(q)`` (``transpose=True``: ``x @ dequantize(q).T``) without
    building the float matrix; ``x @ q`` is the same call.

    ``x``: shape ``(*, d_in)`` (transposed: ``(*, d_out)``), as torch's Linear
    takes its input: leading dimensions (any number, possibly empty) are rows, a
    1-D ``x`` is one row; the result has shape ``(*, d_out)`` (transposed:
    ``(*, d_in)``).  float32 or float64 (float16 is computed in float32, integers
    and bool in float64); the result has that dtype.  The fused float32 path
    multiplies each block's sum by its scale at the end, so for |x| beyond ~1e33
    a block sum can overflow where ``x @ dequantize(q)`` would not.

    The default (``activations=None, compute=None``) is exact: within float32 (or
    float64) rounding of ``x @ dequantize(q)``.  Two opt-in paths trade accuracy for
    speed (float32 result; ``x @ W`` only, not ``transpose``; blocks that 32 divides
    or per-tensor scales):

    * ``activations="int8"``: each row of x is quantized in blocks of 32 (scale
      max|x|/127, as llama.cpp's Q8_0) and multiplied in integers (AVX-512 VNNI,
      AVX-VNNI or AVX2); the README's quantization section gives the error it adds.
      Not for NF4, whose codes are not integers.
    * ``compute="bf16"``: x and the weights' units in bfloat16, products summed in
      float32 (AVX512-BF16 ``vdpbf16ps``); a CPU without it (or a SIMD level pinned
      below avx512) raises ``MissingInstructionError`` (a ValueError) naming it.
    """
    q = _q(q)
    if not isinstance(transpose, (bool, np.bool_)):
        raise ValueError(f"transpose must be a bool, got {transpose!r}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be None (exact) or 'int8', got {activations!r}")
    if compute not in COMPUTES:
        raise ValueError(f"compute must be None (exact) or 'bf16', got {compute!r}")
    if activations is not None and compute is not None:
        raise ValueError("activations='int8' and compute='bf16' are two different paths; "
                         f"choose one, got activations={activations!r}, compute={compute!r}")
    path = activations or compute
    if path is not None and transpose:
        raise ValueError(f"{'activations' if activations else 'compute'}={path!r} computes "
                         "x @ W only; transpose=True (a layer's backward product) runs the "
                         "exact path: leave activations and compute at None")
    x = _plain(x, "x")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"x must have a real dtype, got {x.dtype}")
    if path is not None and x.dtype != np.float32:
        x = x.astype(np.float32)
    elif x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32 if x.dtype.kind == "f" and x.dtype.itemsize < 4 else np.float64)
    d_in, d_out = q.shape
    k, m = (d_out, d_in) if transpose else (d_in, d_out)
    if x.ndim == 0 or x.shape[-1] != k:
        what = f"dequantize(q).T of shape {(d_out, d_in)}" if transpose else \
            f"dequantize(q) of shape {q.shape}"
        raise ValueError(f"x of shape {x.shape} cannot be multiplied with {what}: the inner "
                         f"dimensions differ (x needs shape (..., {k}))")
    if path is not None:
        _qpaths.check_path(q, path)
    lead = x.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    x2 = np.ascontiguousarray(x.reshape(n, k))
    res_shape = lead + (m,)
    if out is not None:
        out = check_out(out, "out", res_shape, x2.dtype, inputs=(x,))
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
    buf = np.empty((n, m), x2.dtype) if out is None else out.reshape(n, m)
    if n == 0:
        return out if out is not None else buf.reshape(res_shape)
    res = _qpaths.run(x2, q, bool(transpose), path, buf, backend)
    return out if out is not None else res.reshape(res_shape)
