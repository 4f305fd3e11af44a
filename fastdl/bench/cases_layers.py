"""Benchmark cases for the normalization layers, forward (out=) and backward.

Forward cases write into a preallocated ``out=`` and are compared with a copy
of the same array; backward cases read dy and x and write dx, and reuse the
forward's saved statistics.  PyTorch peers: the ``F.*`` call for forward, the
autograd backward of that call for backward.
"""
import numpy as np

import fastdl
from fastdl.bench.case import Case, register

FWD_TARGETS = {"cython": {"vs_limit": 1.5, "vs_torch": 1.5, "vs_numpy": 3.0}}
BWD_TARGETS = {"cython": {"vs_limit": 3.0, "vs_torch": 1.5, "vs_numpy": 3.0}}


def _spec(kind, shape):
    """(public forward, public backward, args(inputs) -> positional args after the
    input, torch call, parameter shape)."""
    C, D = shape[1], shape[-1]

    def torch_call(F, X, W, B, rm, rv):
        return {"layer": lambda: F.layer_norm(X, (D,), W, B),
                "rms": lambda: F.rms_norm(X, (D,), W),
                "batch": lambda: F.batch_norm(X, rm, rv, W, B, True),
                "instance": lambda: F.instance_norm(X, weight=W, bias=B),
                "group": lambda: F.group_norm(X, 32, W, B)}[kind]

    def args(inp):
        w, b = inp["w"], inp["b"]
        return {"layer": ((D,), w, b), "rms": ((D,), w),
                "batch": (inp["rm"], inp["rv"], w, b, True),
                "instance": (None, None, w, b), "group": (32, w, b)}[kind]

    fwd = {"layer": fastdl.layer_norm, "rms": fastdl.rms_norm, "batch": fastdl.batch_norm,
           "instance": fastdl.instance_norm, "group": fastdl.group_norm}[kind]
    bwd = {"layer": fastdl.layer_norm_backward, "rms": fastdl.rms_norm_backward,
           "batch": fastdl.batch_norm_backward, "instance": fastdl.instance_norm_backward,
           "group": fastdl.group_norm_backward}[kind]
    pshape = (D,) if kind in ("layer", "rms") else (C,)
    return fwd, bwd, args, torch_call, pshape


def _setup(shape, pshape, dtype):
    def setup():
        rng = np.random.default_rng(0)
        x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)
        return {"x": x, "dy": rng.standard_normal(shape, dtype=np.float32).astype(dtype),
                "out": np.empty_like(x),
                "w": (1 + 0.1 * rng.standard_normal(pshape)).astype(dtype),
                "b": (0.1 * rng.standard_normal(pshape)).astype(dtype),
                "rm": np.zeros(shape[1], dtype), "rv": np.ones(shape[1], dtype)}
    return setup


def _torch_inputs(inp, grad):
    import torch
    t = {k: torch.from_numpy(inp[k]) for k in ("x", "dy", "w", "b", "rm", "rv")}
    for k in ("x", "w", "b"):
        t[k].requires_grad_(grad)
    return torch, t


def _layer_case(kind, shape, direction, dtype=np.float32, quick=True):
    fwd, bwd, args, torch_call, pshape = _spec(kind, shape)
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    dims = "x".join(map(str, shape))
    name = f"norm/{kind}{'32' if kind == 'group' else ''}/{direction}/{dims}/{np.dtype(dtype).name}"
    op = {"layer": "layer_norm", "rms": "rms_norm", "batch": "batch_norm",
          "instance": "group_norm", "group": "group_norm"}[kind]
    params = {"shape": shape, "kind": kind, "dtype": np.dtype(dtype).name,
              "direction": direction}
    setup = _setup(shape, pshape, dtype)

    if direction == "forward":
        def call(inp, backend):
            return fwd(inp["x"], *args(inp), out=inp["out"], backend=backend)

        def torch_peer(inp):
            import torch.nn.functional as F
            torch, t = _torch_inputs(inp, False)
            return torch_call(F, t["x"], t["w"], t["b"], t["rm"], t["rv"])

        return Case(name=name, op=op + "_fwd", setup=setup, call=call,
                    bytes_read=n * itemsize, bytes_written=n * itemsize, flops=8 * n,
                    torch=torch_peer, quick=quick, targets=FWD_TARGETS, params=params)

    def setup_bwd():
        inp = setup()
        _, inp["stats"] = fwd(inp["x"], *args(inp), return_stats=True, backend="numpy")
        return inp

    def call_bwd(inp, backend):
        return bwd(inp["dy"], inp["x"], *args(inp), stats=inp["stats"], backend=backend)

    def torch_peer_bwd(inp):
        import torch.nn.functional as F
        torch, t = _torch_inputs(inp, True)
        y = torch_call(F, t["x"], t["w"], t["b"], t["rm"], t["rv"])()
        leaves = (t["x"], t["w"]) if kind == "rms" else (t["x"], t["w"], t["b"])
        return lambda: torch.autograd.grad(y, leaves, t["dy"], retain_graph=True)

    return Case(name=name, op=op + "_bwd",
                setup=setup_bwd, call=call_bwd, bytes_read=2 * n * itemsize,
                bytes_written=n * itemsize, flops=14 * n, torch=torch_peer_bwd, quick=quick,
                targets=BWD_TARGETS, params=params)


for _direction in ("forward", "backward"):
    register(_layer_case("layer", (4096, 4096), _direction))
    register(_layer_case("layer", (64, 128, 768), _direction))
    for _kind in ("batch", "instance", "group"):
        register(_layer_case(_kind, (64, 256, 1024), _direction))
    register(_layer_case("rms", (4096, 4096), _direction))
    # --full only: float64, and batch norm on (N, C) (the column path)
    register(_layer_case("layer", (4096, 4096), _direction, dtype=np.float64, quick=False))
    register(_layer_case("batch", (16384, 1024), _direction, quick=False))
