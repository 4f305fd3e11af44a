"""Benchmark cases for normalization statistics (mean and variance per batch, layer, instance and group)."""
import numpy as np

import fastdl
from fastdl.bench.case import Case, register

_TORCH_DIMS = {"batch": lambda nd: [0] + list(range(2, nd)),
               "layer": lambda nd: list(range(1, nd)),
               "instance": lambda nd: list(range(2, nd))}


def _torch_peer(kind, num_groups):
    def make(inp):
        import torch
        x = torch.from_numpy(inp["x"])
        if kind == "group":
            xg = x.reshape(x.shape[0], num_groups, -1)
            return lambda: torch.var_mean(xg, dim=2, correction=0)
        dims = _TORCH_DIMS[kind](x.ndim)
        return lambda: torch.var_mean(x, dim=dims, correction=0)
    return make


def _norm_stats_case(shape, kind, dtype=np.float32, num_groups=None, quick=True):
    itemsize = np.dtype(dtype).itemsize
    n = int(np.prod(shape))
    groups = {"batch": shape[1], "layer": shape[0], "instance": shape[0] * shape[1],
              "group": shape[0] * (num_groups or 1)}[kind]

    def setup():
        rng = np.random.default_rng(0)
        return {"x": (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)}

    def call(inp, backend):
        return fastdl.norm_stats(inp["x"], kind, num_groups=num_groups, backend=backend)

    dims = "x".join(map(str, shape))
    suffix = str(num_groups) if kind == "group" else ""
    return Case(
        name=f"norm_stats/{kind}{suffix}/{dims}/{np.dtype(dtype).name}",
        op="norm_stats", setup=setup, call=call,
        bytes_read=n * itemsize, bytes_written=2 * groups * itemsize,
        flops=5 * n,                 # two passes: add; sub, mul, 2 adds
        torch=_torch_peer(kind, num_groups), quick=quick,
        targets={"cython": {"vs_numpy": 3.0, "vs_limit": 1.5}},
        params={"shape": shape, "kind": kind, "dtype": np.dtype(dtype).name,
                "num_groups": num_groups},
    )


for _kind in ("batch", "layer", "instance", "group"):
    register(_norm_stats_case((64, 256, 1024), _kind, num_groups=32 if _kind == "group" else None))
# --full only: float64, and batch statistics over a short spatial extent (row-chunk path)
for _kind in ("batch", "layer", "instance"):
    register(_norm_stats_case((64, 256, 1024), _kind, dtype=np.float64, quick=False))
register(_norm_stats_case((16384, 1024), "batch", quick=False))
register(_norm_stats_case((4096, 4096), "layer", quick=False))
