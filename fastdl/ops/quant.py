"""The quantization ops: quantize, dequantize and the fused dequantize-matmul.

A weight ``w`` has shape ``(d_in, d_out)``; its codes are stored transposed,
one row per output column (see ``fastdl.quant`` for the storage and the value
rules every backend shares).
"""
from __future__ import annotations

import numpy as np

from fastdl.ops._spec import Arg, OpSpec, Result, define

SCHEMES = ("absmax", "nf4")
ROUNDINGS = ("nearest", "floor")

_ASSUME = ("w / x C-contiguous, aligned, non-empty; 1 <= block_size <= d_in; out exact; "
           "q a QuantizedTensor whose arrays the kernel module checks again")


def _rule_quantize(values, dims):
    if values["scheme"] == "nf4" and values["bits"] != 4:
        raise ValueError(f"scheme 'nf4' needs bits=4, got {values['bits']}")
    if values["scheme"] == "nf4" and values["rounding"] != "nearest":
        raise ValueError("scheme 'nf4' rounds to the nearest code: rounding must be 'nearest', "
                         f"got {values['rounding']!r}")


def _matmul_shapes(dims, values):
    return ("n", "d_out" if values["transpose"] else "d_in")


def _out_shape(dims, values):
    return ("n", "d_in" if values["transpose"] else "d_out")


def _weights(rng, tiny):
    d_in = 1 if tiny else int(rng.choice([1, 7, 64, 65, 130]))
    d_out = 1 if tiny else int(rng.choice([1, 3, 8, 17]))
    return rng.standard_normal((d_in, d_out)).astype(np.float32)


def _s_quantize(rng, dtype, tiny=False):
    w = _weights(rng, tiny)
    scheme = str(rng.choice(SCHEMES))
    bits = 4 if scheme == "nf4" else int(rng.integers(2, 9))
    rounding = "nearest" if scheme == "nf4" else str(rng.choice(ROUNDINGS))
    per_tensor = bool(rng.random() < 0.25)
    return w, bits, scheme, int(rng.integers(1, w.shape[0] + 1)), rounding, per_tensor


def _tensor(rng, tiny):
    from fastdl import quant
    w, bits, scheme, bs, rounding, per_tensor = _s_quantize(rng, np.float32, tiny)
    q = quant.quantize(w, bits, scheme=scheme, block_size=None if per_tensor else max(bs, 2),
                       rounding=rounding, backend="numpy")
    # the LUT layout too: its kernels run where the blocks allow, the rows form elsewhere
    return q.to_layout("lut") if bits <= 4 and rng.random() < 0.4 else q


def _s_dequantize(rng, dtype, tiny=False):
    q = _tensor(rng, tiny)
    return q, np.empty(q.shape, dtype)


def _s_qmatmul(rng, dtype, tiny=False):
    q = _tensor(rng, tiny)
    transpose = bool(rng.random() < 0.5)
    n = 1 if tiny else int(rng.choice([1, 2, 4, 9]))
    k, m = (q.shape[1], q.shape[0]) if transpose else q.shape
    return rng.standard_normal((n, k)).astype(dtype), q, transpose, np.empty((n, m), dtype)


quantize = define(OpSpec(
    "quantize", area="quant",
    args=(Arg("w", dtype="float32", shape=("d_in", "d_out"), nonempty=True, packed=True),
          Arg("bits", kind="int", low=2, high=8),
          Arg("scheme", kind="choice", choices=SCHEMES),
          Arg("block_size", kind="int", low=1, high="d_in"),
          Arg("rounding", kind="choice", choices=ROUNDINGS),
          Arg("per_tensor", kind="flag")),
    results=(Result("data", None, None, exact=True), Result("scales", "float32", None,
                                                            exact=True)),
    doc="codes (one row per output column) and float32 block scales ((1,) per tensor)",
    assume=_ASSUME, rule=_rule_quantize, sample=_s_quantize))

dequantize = define(OpSpec(
    "dequantize", area="quant",
    args=(Arg("q", kind="quantized", shape=("d_in", "d_out")),
          Arg("out", dtype="float32|float64", shape=("d_in", "d_out"), out=True)),
    results=(Result("out", "like:out", "out"),),
    doc="the float (d_in, d_out) matrix, written into out", assume=_ASSUME,
    sample=_s_dequantize))

qmatmul = define(OpSpec(
    "qmatmul", area="quant",
    args=(Arg("x", dtype="float32|float64", shape=_matmul_shapes, nonempty=True, packed=True),
          Arg("q", kind="quantized", shape=("d_in", "d_out")),
          Arg("transpose", kind="flag"),
          Arg("out", dtype="like:x", shape=_out_shape, out=True)),
    results=(Result("out", "like:x", "out"),),
    doc="x @ dequantize(q) (transpose: x @ dequantize(q).T) into out, without building the "
        "float matrix", assume=_ASSUME, sample=_s_qmatmul))

def _path_tensor(rng, tiny, nf4_ok):
    """A rows-layout absmax (or NF4) tensor with blocks the opt-in paths take."""
    from fastdl import quant
    d_in = 1 if tiny else int(rng.choice([1, 31, 64, 100, 160]))
    d_out = 1 if tiny else int(rng.choice([1, 3, 17, 33]))
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    nf4 = nf4_ok and rng.random() < 0.3
    bits = 4 if nf4 else int(rng.integers(2, 9))
    bs = None if rng.random() < 0.25 else int(rng.choice([32, 64, 128]))
    dq = bs is not None and rng.random() < 0.3
    return quant.quantize(w, bits, scheme="nf4" if nf4 else "absmax", block_size=bs,
                          double_quant=dq, backend="numpy")


def _s_path(nf4_ok):
    def sample(rng, dtype, tiny=False):
        q = _path_tensor(rng, tiny, nf4_ok)
        n = 1 if tiny else int(rng.choice([1, 2, 5, 40]))
        return (rng.standard_normal((n, q.shape[0])).astype(np.float32), q,
                np.empty((n, q.shape[1]), np.float32))
    return sample


def _path_op(name, doc, nf4_ok):
    return define(OpSpec(
        name, area="quant",
        args=(Arg("x", dtype="float32", shape=("n", "d_in"), nonempty=True, packed=True),
              Arg("q", kind="quantized", shape=("d_in", "d_out")),
              Arg("out", dtype="float32", shape=("n", "d_out"), out=True)),
        results=(Result("out", "float32", "out"),),
        doc=doc, assume=_ASSUME + "; q in the rows layout, scheme absmax or nf4, block_size a "
        "multiple of 32 or per tensor", sample=_s_path(nf4_ok)))


qmatmul_int8 = _path_op(
    "qmatmul_int8", "x @ dequantize(q) with x quantized per row in blocks of 32 (int8, scale "
    "max|x|/127) and integer products", nf4_ok=False)
qmatmul_bf16 = _path_op(
    "qmatmul_bf16", "x @ dequantize(q) with x and the weight units rounded to bfloat16, "
    "products summed in float32", nf4_ok=True)

QUANT_OPS = (quantize, dequantize, qmatmul, qmatmul_int8, qmatmul_bf16)
