"""Normalization API (DESIGN.md §3): statistics now, layers in later issues."""
from __future__ import annotations

import math

import numpy as np

from fastdl import registry
from fastdl._validate import as_float_array, check_choice, check_int

__all__ = ["norm_stats", "NORM_KINDS"]

NORM_KINDS = ("batch", "layer", "instance", "group")
registry.declare_op("norm_stats")


def _group_count(shape, kind: str, num_groups) -> int:
    n, c, spatial = shape[0], shape[1], math.prod(shape[2:])
    return {"batch": n * spatial, "layer": c * spatial, "instance": spatial,
            "group": (c // num_groups if num_groups else 0) * spatial}[kind]


def norm_stats(x, kind: str, *, num_groups: int | None = None, ddof: int = 0,
               backend: str | None = None):
    """Mean and variance of ``x`` (N, C, *spatial) as each normalization uses them.

    ``kind="batch"`` -> shapes (C,), over N and the spatial dims;
    ``"layer"`` -> (N,), over C and spatial; ``"instance"`` -> (N, C), over
    spatial; ``"group"`` -> (N, num_groups), over C/num_groups channels and
    spatial.  ``ddof`` is NumPy's delta degrees of freedom (0: biased, as the
    normalization layers use).  float32/float64 keep their dtype; integer and
    bool inputs are computed in float64.  Returns ``(mean, var)``.
    """
    x = as_float_array(x, "x")
    check_choice(kind, "kind", NORM_KINDS)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, *spatial), got shape {x.shape}")
    ddof = check_int(ddof, "ddof", minimum=0)
    if kind == "group":
        if num_groups is None:
            raise ValueError("num_groups is required for kind='group'")
        num_groups = check_int(num_groups, "num_groups", minimum=1)
        if x.shape[1] % num_groups:
            raise ValueError(f"num_groups must divide the number of channels C={x.shape[1]}, "
                             f"got num_groups={num_groups}")
    elif num_groups is not None:
        raise ValueError(f"num_groups is only used with kind='group', got num_groups={num_groups!r} "
                         f"with kind={kind!r}")
    count = _group_count(x.shape, kind, num_groups)
    if count == 0:
        raise ValueError(f"kind={kind!r} reduces over zero elements for x of shape {x.shape}")
    if count - ddof <= 0:
        raise ValueError(f"ddof must be smaller than the number of elements per group ({count}), "
                         f"got ddof={ddof}")
    return registry.dispatch("norm_stats", (x, kind, num_groups, ddof), {}, backend)
