"""Reference normalization statistics (float64 accumulation, NumPy's two-pass var)."""
import numpy as np


def _axes(ndim: int, kind: str):
    spatial = tuple(range(2, ndim))
    return {"batch": (0,) + spatial, "layer": (1,) + spatial, "instance": spatial}[kind]


def norm_stats(x, kind, num_groups, ddof):
    """(mean, var) per statistic group; arguments are validated by fastdl.norm_stats."""
    if kind == "group":
        x = x.reshape(x.shape[0], num_groups, -1)
        axes = (2,)
    else:
        axes = _axes(x.ndim, kind)
    mean = np.mean(x, axis=axes, dtype=np.float64)
    var = np.var(x, axis=axes, dtype=np.float64, ddof=ddof)
    return mean.astype(x.dtype), var.astype(x.dtype)
