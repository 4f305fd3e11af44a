"""bitsandbytes 4-bit (NF4) weights to and from ``QuantizedTensor``, in NumPy alone.

bitsandbytes stores a ``Linear4bit`` weight of torch shape ``(out, in)`` as
bytes of two 4-bit codes over the row-major flattened weight (value ``2k`` in
the high nibble of byte ``k``, value ``2k + 1`` in the low one), with one
float32 absmax per block of ``blocksize`` consecutive flattened values, and
``value = NF4[code] * absmax`` in float32.  With ``compress_statistics``
(double quantization) the absmax are uint8 codes into bitsandbytes' dynamic
8-bit map: ``absmax[u] = float32(map[code[u]] * nested_absmax[u // nested_blocksize])
+ nested_offset``, all float32.  Hugging Face checkpoints hold the weight and
``QuantState.as_dict(packed=True)``: ``absmax``, ``quant_map``, optionally
``nested_absmax`` and ``nested_quant_map``, and ``quant_state.bitsandbytes__nf4``
(JSON bytes: quant_type, blocksize, dtype, shape, nested_blocksize,
nested_dtype, nested_offset).

fastdl's tensor is the transpose, ``(d_in, d_out) = (in, out)``; its data rows
are bitsandbytes' rows, so only the nibble order changes.  A block must lie in
one row (``in % blocksize == 0``, or a single row).  The import keeps each
block's scale as the exact float32 bitsandbytes rebuilds, so ``dequantize()``
equals ``bitsandbytes.functional.dequantize_4bit(weight, state).T`` bit for bit;
a double-quantized import costs 4 bytes a block instead of about 1.
"""
from __future__ import annotations

import json
import numbers
from collections.abc import Mapping

import numpy as np

from fastdl._backends.numpy.quant import pack_nibbles, unpack_nibbles
from fastdl._validate import reject_masked

BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)    # what dequantize_4bit accepts
DTYPES = ("float32", "float16", "bfloat16")
NESTED_BLOCK = 256                                          # bitsandbytes' compress_statistics
_TENSORS = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
_FIELDS = ("quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype",
           "nested_offset")
_NESTED = ("nested_absmax", "nested_quant_map", "nested_blocksize", "nested_dtype",
           "nested_offset")


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed dynamic 8-bit map (``create_dynamic_map()``): 0, 1 and
    ±10^(i-6) times the midpoints of ``linspace(0.1, 1, 2^i + 1)``, i = 0..6, sorted;
    computed in float64 and rounded once, so an entry may differ by one float32 ulp
    from a given bitsandbytes build (torch's float32 linspace), which does not matter:
    the map travels with the checkpoint as ``nested_quant_map``."""
    vals = [0.0, 1.0]
    for i in range(7):
        b = np.linspace(0.1, 1.0, 2 ** i + 1)
        means = 10.0 ** (i - 6) * (b[:-1] + b[1:]) / 2
        vals += list(means) + list(-means)
    return np.sort(np.array(vals)).astype(np.float32)


# ---------------------------------------------------------------- reading the state

def _numpy(a, name: str) -> np.ndarray:
    """``a`` as an ndarray; a torch tensor is detached and brought to the host first."""
    reject_masked(a, name)
    if not isinstance(a, np.ndarray):
        if hasattr(a, "detach") and hasattr(a, "cpu"):
            a = a.detach().cpu()
        try:
            a = np.asarray(a)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be an array NumPy can read (e.g. a CPU tensor), "
                            f"got {type(a).__name__}: {exc}") from None
    return a


def _array(a, name: str, dtype, shape) -> np.ndarray:
    a = _numpy(a, name)
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


def _finite(a: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, got {a[~np.isfinite(a)][:3]} among its values")
    return a


def _int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"quant_state {name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def _unpack_json(v, key: str) -> dict:
    raw = _numpy(v, f"quant_state[{key!r}]")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise TypeError(f"quant_state[{key!r}] must be a 1-D uint8 array of JSON bytes, got "
                        f"{raw.dtype} of shape {raw.shape}")
    try:
        fields = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"quant_state[{key!r}] does not hold JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"quant_state[{key!r}] must hold a JSON object, got "
                         f"{type(fields).__name__}")
    return fields


def read_state(quant_state) -> dict:
    """The quant state's entries by their bare names (prefixes such as ``weight.``
    stripped, the packed JSON unpacked), checked for unknown, repeated and missing keys."""
    if not isinstance(quant_state, Mapping) and hasattr(quant_state, "as_dict"):
        quant_state = quant_state.as_dict(packed=True)          # a bitsandbytes QuantState
    if not isinstance(quant_state, Mapping):
        raise TypeError("quant_state must be a dict (QuantState.as_dict(packed=True)) or a "
                        f"bitsandbytes QuantState, got {type(quant_state).__name__}")
    out, packed = {}, []
    for key, v in quant_state.items():
        if not isinstance(key, str):
            raise TypeError(f"quant_state keys must be strings, got {key!r}")
        name = key.split(".")[-1]
        if name.startswith("bitsandbytes__"):
            packed.append(key)
            fields = _unpack_json(v, key)
            if fields.get("quant_type") != name[len("bitsandbytes__"):]:
                raise ValueError(f"quant_state[{key!r}] holds quant_type "
                                 f"{fields.get('quant_type')!r}, not the key's "
                                 f"{name[len('bitsandbytes__'):]!r}")
            items = fields.items()
        else:
            items = [(name, v)]
        for k, val in items:
            if k not in _TENSORS + _FIELDS:
                raise ValueError(f"quant_state has an unknown entry {k!r} (from key {key!r}); "
                                 f"expected {_TENSORS + _FIELDS} or a packed "
                                 "'quant_state.bitsandbytes__nf4'")
            if k in out:
                raise ValueError(f"quant_state gives {k!r} twice (key {key!r})")
            out[k] = val
    if len(packed) > 1:
        raise ValueError(f"quant_state must have one packed quant_state entry, got {packed}")
    need = ["absmax", "quant_map", "quant_type", "blocksize", "dtype", "shape"]
    if any(k in out for k in _NESTED):
        need += list(_NESTED)
    missing = [k for k in need if k not in out]
    if missing:
        raise ValueError(f"quant_state is missing {missing}; got {sorted(out)} (a Hugging Face "
                         "checkpoint holds absmax, quant_map, [nested_absmax, nested_quant_map] "
                         "and quant_state.bitsandbytes__nf4)")
    return out


# ---------------------------------------------------------------- from bitsandbytes

def _nested_scales(codes, nested_absmax, nested_map, offset, nested_bs) -> np.ndarray:
    """bitsandbytes' float32 arithmetic: map[code] * nested_absmax[group], then + offset."""
    groups = np.arange(codes.size) // nested_bs
    with np.errstate(over="ignore"):
        return (nested_map[codes] * nested_absmax[groups]).astype(np.float32) + offset


def _layout(st) -> tuple:
    qt = st["quant_type"]
    if qt == "fp4":
        raise ValueError("quant_state quant_type 'fp4' is not supported: fastdl's kernels decode "
                         "the NF4 codebook only; dequantize with bitsandbytes and requantize "
                         "with fastdl.quant.quantize(w, 4, scheme='nf4')")
    if qt != "nf4":
        raise ValueError(f"quant_state quant_type must be 'nf4', got {qt!r}")
    bs = _int(st["blocksize"], "blocksize")
    if bs not in BLOCKSIZES:
        raise ValueError(f"quant_state blocksize must be one of {BLOCKSIZES}, got {bs}")
    if st["dtype"] not in DTYPES:
        raise ValueError(f"quant_state dtype must be one of {DTYPES}, got {st['dtype']!r}")
    shape = st["shape"]
    if not isinstance(shape, (list, tuple)) or len(shape) != 2:
        raise ValueError(f"quant_state shape must be the 2-D torch shape (out, in) of a Linear "
                         f"weight, got {shape!r}")
    out_f, in_f = (_int(s, "shape entries") for s in shape)
    if out_f > 1 and in_f % bs:
        raise ValueError(f"quant_state blocksize {bs} does not divide in_features {in_f} of the "
                         f"weight of shape {(out_f, in_f)}: its blocks span rows, which a fastdl "
                         "tensor (blocks within each output column) cannot hold")
    return out_f, in_f, bs


def from_bnb(cls, weight, quant_state=None):
    """A ``cls`` (QuantizedTensor) holding a bitsandbytes NF4 weight; see the module
    docstring.  ``quant_state`` defaults to ``weight.quant_state`` (a Params4bit)."""
    from fastdl.quant import NF4_CODEBOOK
    if quant_state is None:
        quant_state = getattr(weight, "quant_state", None)
        if quant_state is None:
            raise ValueError("quant_state is missing: pass the QuantState (or its as_dict("
                             "packed=True)), or a bitsandbytes Params4bit weight that has one")
    st = read_state(quant_state)
    out_f, in_f, bs = _layout(st)
    n = out_f * in_f
    w = _numpy(weight, "weight")
    if w.dtype != np.uint8:
        raise TypeError(f"weight must be the packed uint8 codes, got dtype {w.dtype} (a weight "
                        "stored with another quant_storage: pass weight.view(torch.uint8))")
    nbytes = (n + 1) // 2
    if w.shape not in ((nbytes,), (nbytes, 1), (1, nbytes)):
        raise ValueError(f"weight must have shape ({nbytes}, 1) or ({nbytes},) for a "
                         f"{(out_f, in_f)} weight, got {w.shape}")
    qmap = _array(st["quant_map"], "quant_map", np.float32, (16,))
    if not np.array_equal(qmap, NF4_CODEBOOK):
        raise ValueError(f"quant_map must be bitsandbytes' NF4 codebook "
                         f"(fastdl.quant.NF4_CODEBOOK), got {qmap}")
    nb = -(-n // bs)
    nested = None
    if "nested_absmax" in st:
        nbs = _int(st["nested_blocksize"], "nested_blocksize")
        if st["nested_dtype"] != "float32":
            raise ValueError(f"quant_state nested_dtype must be 'float32', got "
                             f"{st['nested_dtype']!r}")
        off = st["nested_offset"]
        off = off.item() if hasattr(off, "item") and np.ndim(off) == 0 else off
        if isinstance(off, bool) or not isinstance(off, numbers.Real) or not np.isfinite(off):
            raise ValueError(f"quant_state nested_offset must be a finite number, got {off!r}")
        codes8 = _array(st["absmax"], "absmax", np.uint8, (nb,))
        na = _finite(_array(st["nested_absmax"], "nested_absmax", np.float32, (-(-nb // nbs),)),
                     "nested_absmax")
        nmap = _finite(_array(st["nested_quant_map"], "nested_quant_map", np.float32, (256,)),
                       "nested_quant_map")
        nested = dict(nested_absmax=_readonly(na), nested_quant_map=_readonly(nmap),
                      nested_offset=np.float32(off), nested_blocksize=nbs)
        scales = _nested_scales(codes8, na, nmap, np.float32(off), nbs)
        _finite(scales, "the absmax rebuilt from the double-quantized quant state")
    else:
        scales = _finite(_array(st["absmax"], "absmax", np.float32, (nb,)), "absmax")
    b = w.reshape(-1)
    codes = np.empty(2 * nbytes, np.uint8)
    codes[0::2], codes[1::2] = b >> 4, b & 15
    data = pack_nibbles(codes[:n].reshape(out_f, in_f))
    origin = dict(dtype=st["dtype"], nested=nested)
    return cls((in_f, out_f), 4, "nf4", bs, "nearest", data,
               np.array(scales, np.float32).reshape(out_f, -(-in_f // bs)), _copy=False,
               _bnb=origin)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


# ---------------------------------------------------------------- to bitsandbytes

def _nearest(table: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the entry of the sorted ``table`` nearest to each ``t`` (ties: lower)."""
    hi = np.clip(np.searchsorted(table, t, side="left"), 1, table.size - 1)
    t64, tab = t.astype(np.float64), table.astype(np.float64)
    up = (tab[hi] - t64) < (t64 - tab[hi - 1])
    return np.where(up, hi, hi - 1).astype(np.uint8)


def quantize_scales(s: np.ndarray):
    """Double quantization as bitsandbytes' compress_statistics: offset = the mean (in
    float64, rounded to float32), then groups of 256 of ``s - offset`` to the nearest
    dynamic-map entry of ``value / group absmax`` (a zero group gets code 0)."""
    nmap = dynamic_map()
    off = np.float32(s.mean(dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        c = s - off
    if not np.isfinite(c).all():
        raise ValueError("the block scales are too large to double-quantize in float32 (their "
                         "difference from the mean overflows); export with double_quant=False")
    groups = np.zeros(-(-c.size // NESTED_BLOCK) * NESTED_BLOCK, np.float32)
    groups[:c.size] = c
    groups = groups.reshape(-1, NESTED_BLOCK)
    na = np.abs(groups).max(axis=1)
    t = (groups / np.where(na > 0, na, np.float32(1))[:, None]).astype(np.float32)
    codes = _nearest(nmap, t)
    codes[na == 0] = 0
    return codes.reshape(-1)[:c.size], na, nmap, off


def _sortable(f: np.ndarray) -> np.ndarray:
    """uint64 keys of float32 values, in the floats' order (-0 before +0)."""
    b = f.view(np.uint32).astype(np.uint64)
    return np.where(b >> np.uint64(31), np.uint64(0xFFFFFFFF) - b, b | np.uint64(0x80000000))


def _pick(match, su, gu, nmap, na, off):
    """Per row of ``match`` (codes that rebuild ``su``), the code nearest (s - offset) /
    group absmax; code 0 in a zero group (all codes rebuild the offset there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (su.astype(np.float64) - off) / na[gu]
    dist = np.abs(nmap[None, :].astype(np.float64) - t[:, None])
    dist = np.where(na[gu][:, None] == 0, np.arange(256)[None, :], dist)
    return np.argmin(np.where(match, dist, np.inf), axis=1)


def _recover_codes(s: np.ndarray, nested: dict):
    """The codes (into the imported nested map and group absmax) that rebuild ``s`` bit
    for bit; among codes that rebuild the same float32, the one nearest (s - offset) /
    group absmax.  None if some scale has no such code."""
    nmap, na = nested["nested_quant_map"], nested["nested_absmax"]
    off, nbs = nested["nested_offset"], nested["nested_blocksize"]
    with np.errstate(over="ignore"):
        table = (nmap[None, :] * na[:, None]).astype(np.float32) + off      # (groups, 256)
    g = np.arange(s.size) // nbs
    keys = (_sortable(table) + (np.arange(na.size, dtype=np.uint64) << np.uint64(32))[:, None])
    flat = keys.reshape(-1)
    if (flat[1:] >= flat[:-1]).all():     # every group's rebuilt scales in order: bisect
        k = _sortable(s) + (g.astype(np.uint64) << np.uint64(32))
        left, right = np.searchsorted(flat, k, "left"), np.searchsorted(flat, k, "right")
        if (right == left).any():
            return None
        codes = left - g * 256
        many = np.nonzero(right - left > 1)[0]
        if many.size:
            match = table[g[many]].view(np.uint32) == s[many, None].view(np.uint32)
            codes[many] = _pick(match, s[many], g[many], nmap, na, off)
        return codes.astype(np.uint8)
    codes = np.empty(s.size, np.uint8)
    for lo in range(0, s.size, 8192):     # a map out of order: compare with every code
        sl = slice(lo, lo + 8192)
        match = table[g[sl]].view(np.uint32) == s[sl, None].view(np.uint32)
        if not match.any(axis=1).all():
            return None
        codes[sl] = _pick(match, s[sl], g[sl], nmap, na, off)
    return codes


def _export_blocksize(q) -> int:
    d_in, d_out = q.shape
    if q.scheme != "nf4" or q.block_size is None:
        raise ValueError("to_bnb needs an NF4 tensor with block-wise scales (scheme='nf4', a "
                         f"block_size), got scheme={q.scheme!r}, block_size={q.block_size}")
    bs = q.block_size
    if d_out > 1 and d_in % bs:
        if bs < d_in:
            raise ValueError(f"to_bnb: block_size {bs} does not divide d_in {d_in}, so each "
                             "column ends in a short block, which bitsandbytes' blocks over "
                             "the flattened (out, in) weight cannot hold")
        bs = d_in                              # one block per column is one block per row
    if bs not in BLOCKSIZES:
        raise ValueError(f"to_bnb: bitsandbytes' blocksize must be one of {BLOCKSIZES}, got "
                         f"{bs} (block_size {q.block_size}, d_in {d_in})")
    return bs


def to_bnb(q, double_quant=None):
    """(weight, quant_state) of ``q`` as bitsandbytes stores them (see
    ``QuantizedTensor.to_bnb``)."""
    from fastdl.quant import NF4_CODEBOOK
    if double_quant is not None and not isinstance(double_quant, (bool, np.bool_)):
        raise ValueError(f"double_quant must be None or a bool, got {double_quant!r}")
    bs = _export_blocksize(q)
    d_in, d_out = q.shape
    origin = q._bnb or dict(dtype="float32", nested=None)
    if double_quant is None:
        double_quant = origin["nested"] is not None if q._bnb else q.double_quant
    codes = unpack_nibbles(q.data, d_in).reshape(-1)
    if codes.size % 2:                   # the pad nibble: NF4's code of 0.0, as bitsandbytes
        codes = np.append(codes, np.uint8(7))
    weight = ((codes[0::2] << 4) | codes[1::2]).astype(np.uint8).reshape(-1, 1)
    s = np.ascontiguousarray(q.block_scales(), np.float32).reshape(-1)
    fields = dict(quant_type="nf4", blocksize=bs, dtype=origin["dtype"], shape=[d_out, d_in])
    state = {}
    if not double_quant:
        state["absmax"] = s.copy()
        state["quant_map"] = NF4_CODEBOOK.copy()
    else:
        nested = origin["nested"]
        codes8 = _recover_codes(s, nested) if nested is not None else None
        if codes8 is None:
            codes8, na, nmap, off = quantize_scales(s)
            nbs = NESTED_BLOCK
        else:
            na, nmap = nested["nested_absmax"], nested["nested_quant_map"]
            off, nbs = nested["nested_offset"], nested["nested_blocksize"]
        state.update(absmax=codes8, quant_map=NF4_CODEBOOK.copy(), nested_absmax=na.copy(),
                     nested_quant_map=nmap.copy())
        fields.update(nested_blocksize=nbs, nested_dtype="float32", nested_offset=float(off))
    state["quant_state.bitsandbytes__nf4"] = np.frombuffer(json.dumps(fields).encode("utf-8"),
                                                           np.uint8).copy()
    return weight, state
