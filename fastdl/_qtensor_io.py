"""The QuantizedTensor's files and its exchange with bitsandbytes and llama.cpp (GGUF).

A mixin of ``fastdl.quant.QuantizedTensor``: the class's storage rules are in
``fastdl.quant``; the readers and converters in ``fastdl._qfile``, ``fastdl._bnb`` and
``fastdl._gguf``.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from fastdl import _qfile
from fastdl._qformat import FORMAT_VERSION, READ_VERSIONS, file_entries

if TYPE_CHECKING:
    from fastdl.quant import QuantizedTensor


class TensorIO:
    __slots__ = ()

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
        return _bnb.to_bnb(self.to_layout("rows"), double_quant)

    @classmethod
    def from_gguf(cls, data, type_name, shape) -> "QuantizedTensor":
        """llama.cpp's Q4_0, Q4_1 or Q8_0 blocks as a tensor whose ``dequantize()``
        equals ``gguf.quants.dequantize(data, type).T`` bit for bit.  ``data``: the raw
        block bytes (as ``gguf.quants.quantize`` returns them: uint8, flat or one row of
        blocks per tensor row); ``type_name``: 'Q4_0', 'Q4_1' or 'Q8_0' (or the gguf
        enum); ``shape``: the float tensor's shape as GGUF stores it, ``(d_out, d_in)``
        (torch's ``(out, in)``; blocks of 32 run along ``d_in``).  Q4_0 is scheme
        'signmax', Q4_1 'minmax', Q8_0 'absmax' (8 bits); all with blocks of 32 and
        float16 scales."""
        from fastdl import _gguf
        f = _gguf.from_gguf_fields(data, type_name, shape)
        return cls(f["shape"], f["bits"], f["scheme"], f["block_size"], "nearest", f["data"],
                   f["scales"], mins=f.get("mins"), scale_dtype=f["scale_dtype"], _copy=False)

    def to_gguf(self) -> tuple:
        """``(data, type_name, shape)`` for llama.cpp: the raw uint8 blocks (one row per
        output column, as ``gguf.quants.quantize`` returns them), 'Q4_0' / 'Q4_1' /
        'Q8_0', and the GGUF shape ``(d_out, d_in)``.  Needs a tensor those types hold
        exactly: blocks of 32 along a ``d_in`` that 32 divides, float16 scale values,
        4-bit signmax or absmax (Q4_0), 4-bit minmax (Q4_1) or 8-bit absmax or signmax
        (Q8_0) — the tensors ``from_gguf`` makes, and ``quantize(w, 4,
        scheme='signmax')`` / ``(w, 4, scheme='minmax')`` / ``(w, 8)`` with
        ``block_size=32, scale_dtype='float16'``."""
        from fastdl import _gguf
        if self.double_quant:
            raise ValueError("GGUF's Q4_0/Q4_1/Q8_0 blocks keep float16 scales; a double-"
                             "quantized tensor has 8-bit ones (quantize with "
                             "double_quant=False)")
        q = self.to_layout("rows")
        fields = dict(shape=q.shape, bits=q.bits, scheme=q.scheme, block_size=q.block_size,
                      data=q.data, scales=q.scales, mins=q.mins)
        return _gguf.to_gguf_bytes(fields), _gguf.gguf_type_of(fields), \
            (q.shape[1], q.shape[0])

    def save(self, path) -> None:
        """Write a NumPy ``.npz`` (no pickle) with a format version (2: scale dtype and
        layout; ``load`` reads versions 1 and 2)."""
        meta = {"format": "fastdl.QuantizedTensor", "version": FORMAT_VERSION,
                "shape": list(self.shape), "bits": self.bits, "scheme": self.scheme,
                "block_size": self.block_size, "rounding": self.rounding,
                "double_quant": self.double_quant, "scale_dtype": self.scale_dtype,
                "layout": self.layout}
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8), "data": self.data}
        if self.double_quant:
            arrays.update(scale_codes=self.scale_codes, scale_scales=self.scale_scales,
                          scale_mean=self.scale_mean)
        else:
            sdt = np.float16 if self.scale_dtype == "float16" else np.float32
            arrays["scales"] = self.scales.astype(sdt)
            if self.mins is not None:
                arrays["mins"] = self.mins.astype(sdt)
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
        fields, arrays = _qfile.read_tensor_fields(path, READ_VERSIONS, file_entries)
        kw = {k: arrays[k] for k in ("scale_codes", "scale_scales", "scale_mean")
              if fields["double_quant"]}
        scales, mins = arrays.get("scales"), arrays.get("mins")
        if fields["scale_dtype"] == "float16":
            scales = scales.astype(np.float32)
            mins = None if mins is None else mins.astype(np.float32)
        # the reader's arrays are fresh and read-only: the tensor owns them (no copy)
        return cls(tuple(fields["shape"]), fields["bits"], fields["scheme"],
                   fields["block_size"], fields["rounding"], arrays["data"], scales,
                   mins=mins, scale_dtype=fields["scale_dtype"], layout=fields["layout"],
                   _copy=False, **kw)
