"""Every ``qmatmul`` path side by side, per weight format and number of rows
(4096x4096, float32 activations): ``quant/path/FORMAT/nN/PATH``.

Paths: ``exact`` (the rows layout's fused kernels), ``lut`` (the lookup-table
kernels of a ``layout="lut"`` tensor; 2..4 bits, up to 16 rows), ``int8``
(``activations="int8"``) and ``bf16`` (``compute="bf16"``, where the CPU has
AVX512-BF16).  Formats: fastdl's int4 / int8 absmax and NF4 with double
quantization in blocks of 64, and llama.cpp's Q4_0, Q4_1, Q8_0 (blocks of 32,
float16 scales).

Peers, timed in the same rounds as the path: NumPy and PyTorch float32 ``x @ W`` on
the unquantized weight, PyTorch's dynamic int8 ``Linear`` (int8 activations, VNNI),
bitsandbytes' fused CPU 4-bit GEMV on the same NF4 weight (n = 1, one thread, its
fastest here; where installed) and, for the
opt-in paths, the exact path on the same tensor.  The limit is a plain read of the
packed bytes (codes + scales) and x.  Metric ``err``: max |y - y64| / max |y64| over the
first 64 rows, y64 = ``x @ dequantize(q)`` in float64 (bitsandbytes' own error on its
weight: ``err bnb``).  From 64 rows on, the NumPy backend (the paths' float64
references) is not timed: the ×numpy column is empty there.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from fastdl.bench.case import Case, register
from fastdl.bench.cases_quant import D, _numpy_f32, _torch_f32, _torch_int8
from fastdl.bench.cases_quant import _w as _quant_weight
from fastdl.quant import dequantize, qmatmul, quantize
from fastdl.testing import has_simd, simd

NS = (1, 8, 64, 512)
FORMATS = {          # name -> quantize keywords
    "int4-b64": dict(bits=4, block_size=64),
    "nf4-b64-dq": dict(bits=4, scheme="nf4", block_size=64, double_quant=True),
    "int8-b64": dict(bits=8, block_size=64),
    "q4_0": dict(bits=4, scheme="signmax", block_size=32, scale_dtype="float16"),
    "q4_1": dict(bits=4, scheme="minmax", block_size=32, scale_dtype="float16"),
    "q8_0": dict(bits=8, block_size=32, scale_dtype="float16"),
}
LUT_ROWS = 16
ERR_ROWS = 64            # rows the error is measured on (the float64 product of 512 takes seconds)
QUICK = {("int4-b64", 1, "*"), ("nf4-b64-dq", 1, "*"), ("int4-b64", 512, "int8")}
_cache: dict = {}


def _have(mod):
    return importlib.util.find_spec(mod) is not None


def _bf16_ok() -> bool:
    try:
        from fastdl._backends.cython import _qbf16
    except ImportError:
        return False
    return bool(_qbf16.bf16_available()[0])


def _w():
    return _quant_weight()          # the same weight as cases_quant's


def _tensor(fmt, layout="rows"):
    key = (fmt, layout)
    if key not in _cache:
        _cache[key] = quantize(_w(), **FORMATS[fmt], layout=layout)
    return _cache[key]


def _ref64(fmt):
    """float64 dequantized weight of one format at a time (128 MB)."""
    if _cache.get("ref_fmt") != fmt:
        _cache["ref"] = dequantize(_tensor(fmt), np.float64)
        _cache["ref_fmt"] = fmt
    return _cache["ref"]


def _err(y, x, fmt):
    ref = x.astype(np.float64) @ _ref64(fmt)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


# ---------------------------------------------------------------- peers

def _bnb_state():
    """bitsandbytes' NF4 (blocks of 64, double quantization) of the same weight, repacked
    as its Linear4bit repacks for CPU inference (its fused AVX512-BF16 GEMV)."""
    if "bnb" not in _cache:
        import bitsandbytes.functional as F
        import torch
        wq, st = F.quantize_4bit(torch.from_numpy(np.ascontiguousarray(_w().T)), blocksize=64,
                                 quant_type="nf4", compress_statistics=True)
        deq = F.dequantize_4bit(wq, st).float().numpy().T.astype(np.float64)
        _cache["bnb"] = F._convert_weight_packed_for_cpu(wq, st) + (deq,)
    return _cache["bnb"]


def _bnb_call(x):
    import bitsandbytes.functional as F
    import torch
    pw, ps, _ = _bnb_state()
    xt = torch.from_numpy(x).to(torch.bfloat16)

    def run():                           # one thread: its fastest setting here
        was = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                return F.gemv_4bit(xt, pw, state=ps)
        finally:
            torch.set_num_threads(was)
    return run


def _bnb_ok() -> bool:
    if not (_have("bitsandbytes") and _have("torch")):
        return False
    import bitsandbytes.functional as F
    return hasattr(F, "_convert_weight_packed_for_cpu") and hasattr(F, "gemv_4bit")


def _bnb_err(x):
    y = _bnb_call(x)().float().numpy()
    ref = x.astype(np.float64) @ _bnb_state()[2]
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def _path_kw(path):
    return {"int8": dict(activations="int8"), "bf16": dict(compute="bf16")}.get(path, {})


def _exact(inp):
    x, q, out = inp["x"], inp["q_rows"], inp["out"]
    return lambda: qmatmul(x, q, out=out, backend="cython")


def _at_level(level):
    def make(inp):
        x, q, out, kw = inp["x"], inp["q"], inp["out"], inp["kw"]

        def run():
            with simd(level):
                return qmatmul(x, q, out=out, backend="cython", **kw)
        return run
    return make


# ---------------------------------------------------------------- cases

def _targets(fmt, n, path):
    t = {}
    if path == "lut" and n == 1 and fmt in ("int4-b64", "nf4-b64-dq"):
        t.update({"vs:numpy x@W f32": 4.0, "vs_limit": 2.0})
    if path == "lut" and 1 < n <= LUT_ROWS:
        t["vs:exact"] = 1.0                       # no slower than the rows-layout kernels
    if path == "int8" and n in (1, 512) and fmt in ("int4-b64", "int8-b64"):
        t["vs:torch int8 dynamic"] = 1.2
    if path == "bf16" and n == 1 and fmt == "nf4-b64-dq":
        t.update({"vs:bnb 4bit": 1.0, "max:err÷bnb": 1.0})
    if path == "exact" and n == 512 and fmt in ("int4-b64", "nf4-b64-dq"):
        t["vs:numpy x@W f32"] = 1 / 1.15
    return t


def _all_targets(fmt, n, path, t):
    out = {"cython": t} if t else {}
    if n == 1 and path == "exact" and fmt in ("int4-b64", "nf4-b64-dq") and has_simd("avx512"):
        out["avx512"] = {"vs:avx2": 1.5}     # the AVX-512 tier over AVX2, same build
    return out


def _case(fmt, n, path):
    layout = "lut" if path == "lut" else "rows"
    kw = _path_kw(path)

    def setup():
        x = np.random.default_rng(1).standard_normal((n, D), dtype=np.float32)
        return {"x": x, "q": _tensor(fmt, layout), "q_rows": _tensor(fmt),
                "out": np.empty((n, D), np.float32), "kw": kw}

    peers = {"numpy x@W f32": _numpy_f32}
    if _have("torch"):
        peers["torch int8 dynamic"] = _torch_int8
    nf4 = fmt.startswith("nf4")
    if nf4 and n == 1 and _bnb_ok():
        peers["bnb 4bit"] = lambda inp: _bnb_call(inp["x"])
    if path != "exact":
        peers["exact"] = _exact
    if n == 1 and path in ("exact", "lut") and has_simd("avx512"):
        peers["avx512"] = _at_level("avx512")
        peers["avx2"] = _at_level("avx2")

    def metrics(inp, backend):
        x = inp["x"][:ERR_ROWS]
        y = qmatmul(x, inp["q"], backend=backend, **inp["kw"])
        m = {"err": _err(y, x, fmt), "bits/param": inp["q"].bits_per_param}
        if path == "bf16" and "bnb 4bit" in peers:
            m["err bnb"] = _bnb_err(inp["x"])
            m["err÷bnb"] = m["err"] / m["err bnb"]
        return m

    nbytes = _tensor(fmt).nbytes
    t = _targets(fmt, n, path)
    return Case(
        name=f"quant/path/{fmt}/n{n}/{path}", op={"int8": "qmatmul_int8",
                                                 "bf16": "qmatmul_bf16"}.get(path, "qmatmul"),
        setup=setup, call=lambda inp, backend: qmatmul(inp["x"], inp["q"], out=inp["out"],
                                                       backend=backend, **inp["kw"]),
        bytes_read=nbytes + n * D * 4, bytes_written=n * D * 4, flops=2 * n * D * D,
        torch=_torch_f32, peers=peers, metrics=metrics, quick=bool({(fmt, n, "*"), (fmt, n, path)} & QUICK),
        warm_s=0.15,                 # OpenBLAS (the x @ W peer) spins ~0.1 s after each call
        reference=n < 64,
        targets=_all_targets(fmt, n, path, t),
        params={"format": fmt, "n": n, "d": D, "path": path},
    )


def _paths(fmt, n):
    out = ["exact"]
    if FORMATS[fmt]["bits"] <= 4 and n <= LUT_ROWS:
        out.append("lut")
    if not fmt.startswith("nf4"):
        out.append("int8")
    if _bf16_ok():
        out.append("bf16")
    return out


for _fmt in FORMATS:
    for _n in NS:
        for _path in _paths(_fmt, _n):
            register(_case(_fmt, _n, _path))
