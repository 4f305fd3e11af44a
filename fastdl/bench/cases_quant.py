"""Benchmark cases for quantized weights (d_in = d_out = 4096, float32 activations).

``qmatmul`` peers: the NumPy backend (dequantize, then matmul), NumPy float32
``x @ W`` on the unquantized weight, PyTorch float32 ``x @ W`` and PyTorch's
dynamic int8 ``Linear``; the limit is a plain read of the packed bytes (data +
scales + x).  Metric ``bits/param``: the format's real storage.

Here: ``x @ W`` at n = 128, ``transpose=True`` (``x @ W.T``, the backward pass of a
quantized layer) at n = 128 and 512, NF4 with plain block scales at n = 1, and
``quantize``; ``x @ W`` at n = 1, 8, 64 and 512 is in ``cases_qpaths`` (every
``qmatmul`` path side by side).  Many rows: the dequantization is O(d^2) against the
O(n d^2) of the product, so the target is at most 1.15x the time of NumPy's
float32 ``x @ W`` (``x @ W.T``) on the unquantized weight in the same run.

For n = 1, where the kernels are bound by unpacking rather than memory, the
Cython backend also runs as two peers pinned to a SIMD level, ``avx512`` and
``avx2`` (where the CPU has them), timed in the same rounds: the ``avx512``
row's ``×avx2`` is the AVX-512 tier's speed-up on the same build (so too in
``cases_qpaths``).
"""
import importlib.util

import numpy as np

from fastdl.bench.case import Case, register
from fastdl.quant import qmatmul, quantize, storage_bytes
from fastdl.testing import has_simd, simd

D = 4096
FORMATS = {          # name -> quantize keywords
    "int8-b64": dict(bits=8, block_size=64),
    "int4-b64": dict(bits=4, block_size=64),
    "nf4-b64-dq": dict(bits=4, scheme="nf4", block_size=64, double_quant=True),
}
# measured at n = 1 only: NF4 with plain float32 block scales
GEMV_FORMATS = {"nf4-b64": dict(bits=4, scheme="nf4", block_size=64)}
BITS_LIMIT = {"int8-b64": 8.5, "int4-b64": 4.5, "nf4-b64-dq": 4.13, "nf4-b64": 4.5}
GEMV_SPEEDUP = {"int8-b64": 3.0, "int4-b64": 5.0, "nf4-b64-dq": 5.0, "nf4-b64": 5.0}
# AVX-512 over AVX2 at n = 1 (full-width 512-bit units; int8 is closer to the memory
# stream, so it has no target)
AVX512_SPEEDUP = {"int4-b64": 1.5, "nf4-b64-dq": 1.5, "nf4-b64": 1.5}

_weights = {}


def _w():
    if "w" not in _weights:
        rng = np.random.default_rng(0)
        _weights["w"] = (rng.standard_normal((D, D), dtype=np.float32) * 0.02)
    return _weights["w"]


def _kw(fmt):
    return FORMATS[fmt] if fmt in FORMATS else GEMV_FORMATS[fmt]


def _q(fmt):
    if fmt not in _weights:
        _weights[fmt] = quantize(_w(), **_kw(fmt))
    return _weights[fmt]


def _nbytes(fmt):
    kw = _kw(fmt)
    return storage_bytes((D, D), kw["bits"], kw["block_size"], kw.get("double_quant", False))


def _numpy_f32(inp):
    x, w, out = inp["x"], _w(), inp["out"]
    return lambda: np.matmul(x, w, out=out)


def _numpy_f32_t(inp):
    x, w, out = inp["x"], _w().T, inp["out"]       # a view: BLAS with its transpose flag
    return lambda: np.matmul(x, w, out=out)


def _torch_f32(inp):
    import torch
    x, w = torch.from_numpy(inp["x"]), torch.from_numpy(_w())
    return lambda: torch.matmul(x, w)


def _torch_f32_t(inp):
    import torch
    x, w = torch.from_numpy(inp["x"]), torch.from_numpy(_w())
    return lambda: torch.matmul(x, w.T)


def _torch_int8(inp):
    import torch
    lin = torch.nn.Linear(D, D, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(_w().T)))
    qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                  dtype=torch.qint8)
    x = torch.from_numpy(inp["x"])

    def run():
        with torch.no_grad():
            return qlin(x)
    return run


def _at_level(level):
    """A peer: the Cython backend's qmatmul pinned to SIMD ``level``."""
    def make(inp):
        x, q, out = inp["x"], inp["q"], inp["out"]

        def run():
            with simd(level):
                return qmatmul(x, q, out=out, backend="cython")
        return run
    return make


# n -> formats with the many-row target (at most 1.15x NumPy's float32 product)
MANY_ROWS = {128: ("int4-b64", "nf4-b64-dq"), 512: ("int4-b64", "nf4-b64-dq")}


def _qmatmul_case(fmt, n, quick=None, transpose=False):
    def setup():
        x = np.random.default_rng(1).standard_normal((n, D), dtype=np.float32)
        return {"x": x, "q": _q(fmt), "out": np.empty((n, D), np.float32)}

    ref = "numpy x@W.T f32" if transpose else "numpy x@W f32"
    peers = {ref: _numpy_f32_t if transpose else _numpy_f32}
    if importlib.util.find_spec("torch") is not None and not transpose:
        peers["torch int8 dynamic"] = _torch_int8
    nbytes = _nbytes(fmt)
    targets = {"max:bits/param": BITS_LIMIT[fmt]}
    all_targets = {"cython": targets}
    if n == 1:
        targets.update({"vs:numpy x@W f32": GEMV_SPEEDUP[fmt], "vs_limit": 1.5})
        if has_simd("avx512"):
            peers["avx512"] = _at_level("avx512")
            peers["avx2"] = _at_level("avx2")
            if fmt in AVX512_SPEEDUP:
                all_targets["avx512"] = {"vs:avx2": AVX512_SPEEDUP[fmt]}
    if fmt in MANY_ROWS.get(n, ()):
        targets["vs:" + ref] = 1 / 1.15
    if quick is None:
        quick = (n in (1, 128, 512) and fmt != "int8-b64") or (n == 1 and fmt == "int8-b64")
    t = "-t" if transpose else ""
    return Case(
        name=f"quant/qmatmul{t}/{fmt}/n{n}/float32", op="qmatmul", setup=setup,
        call=lambda inp, backend: qmatmul(inp["x"], inp["q"], transpose=transpose,
                                          out=inp["out"], backend=backend),
        bytes_read=nbytes + n * D * 4, bytes_written=n * D * 4, flops=2 * n * D * D,
        torch=_torch_f32_t if transpose else _torch_f32, peers=peers, quick=quick,
        metrics=lambda inp, backend: {"bits/param": inp["q"].bits_per_param},
        warm_s=0.15,                 # OpenBLAS (the x @ W peer) spins ~0.1 s after each call
        targets=all_targets, params={"format": fmt, "n": n, "d": D, "transpose": transpose},
    )


def _quantize_case(fmt):
    def setup():
        return {"w": _w()}

    return Case(
        name=f"quant/quantize/{fmt}/{D}x{D}/float32", op="quantize", setup=setup,
        call=lambda inp, backend: quantize(inp["w"], **FORMATS[fmt], backend=backend),
        bytes_read=D * D * 4, bytes_written=_nbytes(fmt), flops=3 * D * D,
        quick=fmt == "int4-b64", targets={"cython": {"vs_limit": 3.0}},
        params={"format": fmt, "d": D},
    )


# x @ W at n = 1, 8, 64 and 512 is in cases_qpaths (every path side by side)
for _fmt in FORMATS:
    register(_qmatmul_case(_fmt, 128))
    for _n in MANY_ROWS:
        if _fmt in MANY_ROWS[_n]:
            register(_qmatmul_case(_fmt, _n, transpose=True))
    register(_quantize_case(_fmt))
for _fmt in GEMV_FORMATS:
    register(_qmatmul_case(_fmt, 1, quick=False))
