"""Exact counts of the normalization statistics: how many elements each mean and
variance is taken over, how many statistics there are, and how many elements all
of them read together.

The input is ``shape`` = (N, C, *spatial): N samples, C channels, S = the product of
the spatial sizes (1 when there are none; for an (N, C, H, W) image S = H·W):

=========  ========================  ============================  =================
kind       one statistic per         elements per statistic        statistics
=========  ========================  ============================  =================
batch      channel                   N·S                           C
layer      sample                    C·S                           N
instance   (sample, channel)         S                             N·C
group      (sample, channel group)   (C/G)·S  (G groups)           N·G
=========  ========================  ============================  =================

Every element belongs to exactly one statistic, so one pass over all of them
reads statistics × elements per statistic = N·C·S elements, whatever the kind
(a mean then a variance read them twice).

``measure_norm_stats`` counts these from ``fastdl.norm_stats`` itself: it feeds
it one-hot inputs and records which statistic each element moves and by how much.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["NORM_STAT_KINDS", "norm_elements_per_statistic", "norm_statistics",
           "norm_elements_read", "measure_norm_stats"]

NORM_STAT_KINDS = ("batch", "layer", "instance", "group")


def _shape(shape, kind, num_groups):
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a tuple of ints (N, C, *spatial), got {shape!r}")
    dims = tuple(shape)
    if len(dims) < 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1
                            for v in dims):
        raise ValueError(f"shape must be (N, C, *spatial) with at least 2 positive ints, "
                         f"got {shape!r}")
    if kind not in NORM_STAT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, NORM_STAT_KINDS))}, "
                         f"got {kind!r}")
    C = int(dims[1])
    if kind == "group":
        if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) \
                or num_groups < 1 or C % num_groups:
            raise ValueError(f"num_groups must be a positive int dividing C={C} for "
                             f"kind='group', got {num_groups!r}")
    elif num_groups is not None:
        raise ValueError(f"num_groups is only used with kind='group', got "
                         f"num_groups={num_groups!r} with kind={kind!r}")
    return int(dims[0]), C, math.prod(int(v) for v in dims[2:])


def norm_elements_per_statistic(shape, kind: str, *, num_groups: int | None = None) -> int:
    """Elements one mean (or variance) is taken over: batch N·S, layer C·S, instance S,
    group (C/G)·S, for ``shape`` (N, C, *spatial) with S the product of the spatial
    sizes and G = ``num_groups``."""
    N, C, S = _shape(shape, kind, num_groups)
    return {"batch": N * S, "layer": C * S, "instance": S,
            "group": (C // num_groups if kind == "group" else 0) * S}[kind]


def norm_statistics(shape, kind: str, *, num_groups: int | None = None) -> int:
    """How many means (and as many variances) the kind computes: batch C, layer N,
    instance N·C, group N·G."""
    N, C, _ = _shape(shape, kind, num_groups)
    return {"batch": C, "layer": N, "instance": N * C,
            "group": N * num_groups if kind == "group" else 0}[kind]


def norm_elements_read(shape, kind: str, *, num_groups: int | None = None) -> int:
    """Elements read by one pass that computes every statistic: statistics × elements
    per statistic = N·C·S, the whole input once, for every kind."""
    return (norm_statistics(shape, kind, num_groups=num_groups)
            * norm_elements_per_statistic(shape, kind, num_groups=num_groups))


def measure_norm_stats(shape, kind: str, *, num_groups: int | None = None,
                       backend: str | None = None) -> dict:
    """Count what ``fastdl.norm_stats`` reduces, by calling it once per element of
    ``shape`` on a float64 input that is 1 at that element and 0 elsewhere.

    The element changes exactly the means of the statistics it belongs to, each by
    1/(that statistic's element count).  Returns ``{"statistics": the size of the
    returned mean, "members": {statistic index: elements that moved it},
    "divisors": {statistic index: 1 / its mean of a one-hot member, rounded},
    "elements_read": (element, statistic) memberships over all elements}``.
    Costs one call per element: meant for small shapes."""
    from fastdl.norm import norm_stats          # here: fastdl.complexity stays light to import
    _shape(shape, kind, num_groups)
    dims = tuple(int(v) for v in shape)
    members: dict = {}
    divisors: dict = {}
    read = 0
    statistics = None
    x = np.zeros(dims)
    for flat in range(x.size):
        x.reshape(-1)[flat] = 1.0
        mean, _ = norm_stats(x, kind, num_groups=num_groups, backend=backend)
        x.reshape(-1)[flat] = 0.0
        mean = np.asarray(mean, np.float64).reshape(-1)
        statistics = mean.size
        moved = np.flatnonzero(mean)
        read += moved.size
        for s in moved.tolist():
            members[s] = members.get(s, 0) + 1
            divisors.setdefault(s, set()).add(int(round(1.0 / mean[s])))
    div = {s: (next(iter(v)) if len(v) == 1 else sorted(v)) for s, v in divisors.items()}
    return {"statistics": int(statistics), "members": members, "divisors": div,
            "elements_read": read}
