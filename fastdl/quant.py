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

The ops (quantize, dequantize, qmatmul), their arguments and results are
declared in ``fastdl.ops.quant`` (``print(fastdl.ops.table("quant"))``); every
backend's functions run behind that one check of what the kernels rely on.
"""
from __future__ import annotations

import json
import numbers

import numpy as np

from fastdl import _qfile
from fastdl import ops as _ops
from fastdl._validate import check_choice, check_int, check_out, reject_masked

__all__ = ["QuantizedTensor", "quantize", "dequantize", "qmatmul", "storage_bytes", "row_bytes",
           "NF4_CODEBOOK", "QUANT_OPS", "SCHEMES", "ROUNDINGS"]

QUANT_OPS = tuple(op.name for op in _ops.QUANT_OPS)
SCHEMES, ROUNDINGS = _ops.SCHEMES, _ops.ROUNDINGS
FORMAT_VERSION = 1
DQ_GROUP = 256            # block scales per group in double quantization
DEFAULT_BLOCK = 64         # every peer quantizes in blocks; 64 is QLoRA's and bitsandbytes'

NF4_CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
NF4_CODEBOOK.setflags(write=False)


def nf4_thresholds() -> np.ndarray:
    """float32 t_k with ``v > t_k`` ⇔ ``v`` above the exact midpoint of codes k, k+1
    (the midpoint rounded toward -inf), for every float32 v: ``code = #{k: v > t_k}``."""
    cb = NF4_CODEBOOK.astype(np.float64)
    mid = (cb[:-1] + cb[1:]) / 2
    t = mid.astype(np.float32)
    too_big = t.astype(np.float64) > mid
    t[too_big] = np.nextafter(t[too_big], np.float32(-np.inf))
    return t


def row_bytes(d_in: int) -> int:
    """Bytes per packed row of d_in codes (two per byte, groups of 64)."""
    return 32 * (d_in // 64) + (d_in % 64 + 1) // 2


def storage_bytes(shape, bits: int, block_size: int | None, double_quant: bool = False) -> int:
    """Real bytes of a quantized ``shape = (d_in, d_out)`` weight: data + scales."""
    d_in, d_out = shape
    if block_size is not None and block_size < 1:
        raise ValueError(f"block_size must be >= 1 or None, got {block_size}")
    data = d_out * (row_bytes(d_in) if bits <= 4 else d_in)
    if block_size is None:
        return data + 4
    count = d_out * -(-d_in // block_size)
    if double_quant:
        return data + count + 4 * -(-count // DQ_GROUP) + 4
    return data + 4 * count


class QuantizedTensor:
    """A quantized ``(d_in, d_out)`` weight; immutable (its arrays are read-only).

    ``shape``, ``bits``, ``scheme``, ``block_size`` (None: one scale for the
    tensor), ``rounding``, ``double_quant``, ``data``, ``scales`` (None with
    double quantization), ``scale_codes`` / ``scale_scales`` / ``scale_mean``
    (double quantization), ``nbytes`` (real storage: data + scales),
    ``bits_per_param``; ``dequantize()``, ``block_scales()``, ``save(path)``,
    ``QuantizedTensor.load(path)``.  ``x @ q`` is ``qmatmul(x, q)`` (x of shape
    ``(*, d_in)``), ``q @ y`` is ``dequantize(q) @ y`` computed the same way, and
    ``np.asarray(q)`` is ``q.dequantize()`` (float32, a new array).  The storage
    format is in this module's docstring.  ``QuantizedTensor.from_bnb(weight,
    quant_state)`` / ``q.to_bnb()``: bitsandbytes 4-bit NF4 weights as Hugging Face
    checkpoints store them.
    """

    __slots__ = ("shape", "bits", "scheme", "block_size", "rounding", "double_quant", "data",
                 "scales", "scale_codes", "scale_scales", "scale_mean", "_bnb", "_frozen")

    def __init__(self, shape, bits, scheme, block_size, rounding, data, scales=None, *,
                 scale_codes=None, scale_scales=None, scale_mean=None, _copy=True, _bnb=None):
        d_in, d_out = (check_int(s, "shape entries", minimum=1) for s in shape)
        bits = check_int(bits, "bits", minimum=2)
        _check_format(bits, scheme, block_size, rounding, double_quant=scale_codes is not None)
        self._set("shape", (d_in, d_out))
        self._set("bits", bits)
        self._set("scheme", scheme)
        self._set("block_size", None if block_size is None else int(block_size))
        self._set("rounding", rounding)
        self._set("double_quant", scale_codes is not None)
        nblocks = self.nblocks
        if bits <= 4:
            want = ("data", np.uint8, (d_out, row_bytes(d_in)))
        else:
            want = ("data", np.int8, (d_out, d_in))
        self._set("data", _frozen_array(data, *want, copy=_copy))
        if scale_codes is None:
            sshape = (1,) if block_size is None else (d_out, nblocks)
            self._set("scales", _frozen_array(scales, "scales", np.float32, sshape, copy=_copy))
            for name in ("scale_codes", "scale_scales", "scale_mean"):
                self._set(name, None)
        else:
            if scales is not None:
                raise ValueError("give either scales or the double-quantized scale_* arrays")
            count = d_out * nblocks
            self._set("scales", None)
            self._set("scale_codes", _frozen_array(scale_codes, "scale_codes", np.int8, (count,)))
            self._set("scale_scales", _frozen_array(scale_scales, "scale_scales", np.float32,
                                                    (-(-count // DQ_GROUP),)))
            self._set("scale_mean", _frozen_array(scale_mean, "scale_mean", np.float32, ()))
        self._set("_bnb", _bnb)             # what from_bnb read beyond the scales, for to_bnb
        self._set("_frozen", True)

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def _fields(self) -> tuple:
        kw = {}
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
        return 1 if self.block_size is None else -(-self.shape[0] // self.block_size)

    @property
    def nbytes(self) -> int:
        return storage_bytes(self.shape, self.bits, self.block_size, self.double_quant)

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

    @classmethod
    def from_bnb(cls, weight, quant_state=None) -> "QuantizedTensor":
        """A bitsandbytes 4-bit NF4 weight (torch shape (out, in)) as the ``(in, out)``
        tensor whose ``dequantize()`` equals ``bitsandbytes.functional.dequantize_4bit(
        weight, quant_state).T`` bit for bit (float32; for a float16/bfloat16 state,
        bitsandbytes' output is these values rounded to that dtype).  ``weight``: the
        packed uint8 codes, shape (n/2, 1) or flat (NumPy or a torch tensor);
        ``quant_state``: ``QuantState.as_dict(packed=True)`` as a checkpoint holds it
        (keys may keep a prefix such as ``weight.``), the QuantState itself, or None for
        ``weight.quant_state``.  Double quantization (compress_statistics) is rebuilt
        into float32 block scales exactly as bitsandbytes rebuilds them (4 bytes a
        block rather than about 1).  fp4 is refused (fastdl decodes NF4 only), and so is
        a blocksize that does not divide ``in`` (its blocks would span rows)."""
        from fastdl import _bnb
        return _bnb.from_bnb(cls, weight, quant_state)

    def to_bnb(self, *, double_quant=None):
        """``(weight, quant_state)`` as bitsandbytes stores an NF4 ``Linear4bit``: the
        uint8 codes of shape (n/2, 1) and the dict ``QuantState.as_dict(packed=True)``
        gives, as NumPy arrays (``{k: torch.from_numpy(v)}`` for ``QuantState.from_dict``).
        Needs scheme 'nf4' with a block size bitsandbytes accepts (32..4096, powers of 2)
        whose blocks fit the columns.  ``double_quant``: None keeps the tensor's own
        choice (an import from bitsandbytes: as imported); False writes the exact float32
        scales (bitsandbytes then rebuilds ``dequantize()`` bit for bit); True quantizes
        the scales as compress_statistics does (mean offset, bitsandbytes' dynamic 8-bit
        map in groups of 256, nearest entry), so values can differ from ``dequantize()``
        (and a fastdl double-quantized tensor's linear 8-bit scales are re-quantized).
        A tensor imported from bitsandbytes exports its own state back (the same codes
        and nested values; a scale code that rebuilds to the same float32 as another may
        be exchanged for it), also after copy or pickle; ``save`` keeps fastdl's format only."""
        from fastdl import _bnb
        return _bnb.to_bnb(self, double_quant)

    def __repr__(self):
        bs = "tensor" if self.block_size is None else self.block_size
        dq = ", double_quant" if self.double_quant else ""
        fmt = "nf4" if self.scheme == "nf4" else f"int{self.bits} absmax"
        return (f"QuantizedTensor(shape={self.shape}, {fmt}, block={bs}{dq}, "
                f"{self.bits_per_param:.3f} bits/param)")

    # ------------------------------------------------------------ files

    def save(self, path) -> None:
        """Write a NumPy ``.npz`` (no pickle) with a format version."""
        meta = {"format": "fastdl.QuantizedTensor", "version": FORMAT_VERSION,
                "shape": list(self.shape), "bits": self.bits, "scheme": self.scheme,
                "block_size": self.block_size, "rounding": self.rounding,
                "double_quant": self.double_quant}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), "data": self.data}
        if self.double_quant:
            arrays.update(scale_codes=self.scale_codes, scale_scales=self.scale_scales,
                          scale_mean=self.scale_mean)
        else:
            arrays["scales"] = self.scales
        if hasattr(path, "write"):
            np.savez(path, **arrays)
        else:
            with open(path, "wb") as f:
                np.savez(f, **arrays)

    @classmethod
    def load(cls, path) -> "QuantizedTensor":
        """Read a file written by ``save`` (a path or a binary file object).  A damaged
        file, or one that is not a fastdl QuantizedTensor file, raises ``ValueError``
        saying so; nothing is allocated from the file's headers before they are checked
        against its real size."""
        fields, arrays = _qfile.read_tensor_fields(path, FORMAT_VERSION, _layout)
        kw = {k: arrays[k] for k in ("scale_codes", "scale_scales", "scale_mean")
              if fields["double_quant"]}
        # the reader's arrays are fresh and read-only: the tensor owns them (no copy)
        return cls(tuple(fields["shape"]), fields["bits"], fields["scheme"],
                   fields["block_size"], fields["rounding"], arrays["data"],
                   arrays.get("scales"), _copy=False, **kw)

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


def _layout(meta) -> dict:
    """{entry: (dtype, shape)} of a saved tensor with these (type-checked) fields."""
    d_in, d_out = meta["shape"]
    bits, bs, dq = meta["bits"], meta["block_size"], meta["double_quant"]
    _check_format(bits, meta["scheme"], bs, meta["rounding"], dq)
    data = (np.int8, (d_out, d_in)) if bits > 4 else (np.uint8, (d_out, row_bytes(d_in)))
    nb = 1 if bs is None else -(-d_in // bs)
    if not dq:
        return {"data": data, "scales": (np.float32, (1,) if bs is None else (d_out, nb))}
    count = d_out * nb
    return {"data": data, "scale_codes": (np.int8, (count,)),
            "scale_scales": (np.float32, (-(-count // DQ_GROUP),)), "scale_mean": (np.float32, ())}


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


def _check_format(bits, scheme, block_size, rounding, double_quant):
    check_choice(scheme, "scheme", SCHEMES)
    check_choice(rounding, "rounding", ROUNDINGS)
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    if scheme == "nf4" and bits != 4:
        raise ValueError(f"scheme='nf4' needs bits=4, got bits={bits}")
    if scheme == "nf4" and rounding == "floor":
        raise ValueError("rounding='floor' does not apply to scheme='nf4' (its codes are the "
                         "nearest codebook entries); use rounding='nearest'")
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral):
            raise ValueError(f"block_size must be an integer >= 2 or None, got {block_size!r}")
        if block_size < 2:
            raise ValueError(f"block_size must be an integer >= 2 or None, got {block_size}")
    if double_quant and block_size is None:
        raise ValueError("double_quant=True needs block-wise scales (a block_size), got "
                         "block_size=None")


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


def _check_finite(w, scales):
    """Every backend's block absmax keeps NaN and inf, so non-finite weights show up as
    non-finite scales: no separate pass over w."""
    if np.isfinite(scales).all():
        return
    if w.dtype.kind == "f" and np.isnan(w).any():
        raise ValueError("w must be finite, got NaN")
    if w.dtype.kind == "f" and np.isinf(w).any():
        raise ValueError("w must be finite, got Inf")
    raise ValueError("w must fit in float32, got values beyond ±3.4e38")


def _dq_scales(scales: np.ndarray):
    """Double quantization of block scales: mean, then 8-bit absmax in groups of 256."""
    flat = scales.reshape(-1).astype(np.float32)
    mean = np.float32(flat.mean(dtype=np.float64))
    c = flat - mean
    pad = (-c.size) % DQ_GROUP
    groups = np.concatenate([c, np.zeros(pad, np.float32)]).reshape(-1, DQ_GROUP)
    delta = (np.abs(groups).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(delta > 0, delta, np.float32(1))
    v = groups / safe[:, None]
    q = np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0)
    q = np.clip(q, -127, 127).astype(np.int8).reshape(-1)[:c.size]
    return q, delta, np.array(mean, np.float32)


def quantize(w, bits, *, scheme="absmax", block_size=DEFAULT_BLOCK, rounding="nearest",
             double_quant=False, backend: str | None = None) -> QuantizedTensor:
    """Quantize a ``(d_in, d_out)`` weight (see the module docstring for the format).

    ``block_size`` (default 64, every scheme): one scale per block of that many
    values along ``d_in`` in each output column, so one outlier only coarsens its
    own block; ``None``: one scale for the whole tensor.  ``scheme="absmax"``:
    ``bits`` 2..8, ``rounding`` "nearest" (half away from zero) or "floor";
    ``quantize(w, m, block_size=None, rounding="floor")`` is exactly
    W̃ = ⌊W/Δ⌋, Δ = max|W| / (2^(m-1) - 1).  ``scheme="nf4"``: QLoRA's
    NormalFloat4 (bits=4; codes are the nearest codebook entry, so
    ``rounding="floor"`` is an error).  ``double_quant``: quantize the block
    scales too (8-bit, groups of 256), as QLoRA does.
    """
    bits = check_int(bits, "bits")
    if not isinstance(double_quant, (bool, np.bool_)):
        raise ValueError(f"double_quant must be a bool, got {double_quant!r}")
    _check_format(bits, scheme, block_size, rounding, bool(double_quant))
    w, w32 = _weights(w)
    d_in, d_out = w32.shape
    bs = d_in if block_size is None else min(int(block_size), d_in)   # a block >= d_in: one
    data, scales = _ops.quantize(w32, bits, scheme, bs, rounding, block_size is None,
                                      backend=backend)
    _check_finite(w, scales)
    if block_size is None:
        scales = np.asarray(scales, np.float32).reshape(1)
    # the backend's fresh arrays become the tensor's own (no copy)
    if double_quant:
        codes, groups, mean = _dq_scales(scales)
        return QuantizedTensor((d_in, d_out), bits, scheme, int(block_size), rounding, data,
                               scale_codes=codes, scale_scales=groups, scale_mean=mean,
                               _copy=False)
    return QuantizedTensor((d_in, d_out), bits, scheme, block_size if block_size is None
                           else int(block_size), rounding, data, scales, _copy=False)


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
    return _ops.dequantize(q, out, backend=backend)


def qmatmul(x, q, *, transpose: bool = False, out=None, backend: str | None = None):
    """``x @ dequantize(q)`` (``transpose=True``: ``x @ dequantize(q).T``) without
    building the float matrix; ``x @ q`` is the same call.

    ``x``: shape ``(*, d_in)`` (transposed: ``(*, d_out)``), as torch's Linear
    takes its input: leading dimensions (any number, possibly empty) are rows, a
    1-D ``x`` is one row; the result has shape ``(*, d_out)`` (transposed:
    ``(*, d_in)``).  float32 or float64 (float16 is computed in float32, integers
    and bool in float64); the result has that dtype.  The fused float32 path
    multiplies each block's sum by its scale at the end, so for |x| beyond ~1e33
    a block sum can overflow where ``x @ dequantize(q)`` would not.
    """
    q = _q(q)
    if not isinstance(transpose, (bool, np.bool_)):
        raise ValueError(f"transpose must be a bool, got {transpose!r}")
    x = _plain(x, "x")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"x must have a real dtype, got {x.dtype}")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32 if x.dtype.kind == "f" and x.dtype.itemsize < 4 else np.float64)
    d_in, d_out = q.shape
    k, m = (d_out, d_in) if transpose else (d_in, d_out)
    if x.ndim == 0 or x.shape[-1] != k:
        what = f"dequantize(q).T of shape {(d_out, d_in)}" if transpose else \
            f"dequantize(q) of shape {q.shape}"
        raise ValueError(f"x of shape {x.shape} cannot be multiplied with {what}: the inner "
                         f"dimensions differ (x needs shape (..., {k}))")
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
    res = _ops.qmatmul(x2, q, bool(transpose), buf, backend=backend)
    return out if out is not None else res.reshape(res_shape)
