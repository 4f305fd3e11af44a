"""Counting the multiply-adds of NumPy code: an ndarray view whose matrix products
add m·n·k (times any batch size) to a running total."""
import numpy as np


class MatmulCounter(np.ndarray):
    """An array whose matrix products add m·n·k (times any batch size) to ``total``."""

    total = 0

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(a).view(np.ndarray) if isinstance(a, np.ndarray) else a
                 for a in inputs]
        if ufunc is np.matmul and method == "__call__":
            a, b = plain
            if not (a.ndim >= 2 and b.ndim == 2):      # m·n·k counts matrix products only
                raise ValueError(f"MatmulCounter counts matrix products; got shapes "
                                 f"{a.shape} @ {b.shape}")
            MatmulCounter.total += int(np.prod(a.shape[:-1])) * a.shape[-1] * b.shape[-1]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in kwargs["out"])
        res = getattr(ufunc, method)(*plain, **kwargs)
        return res.view(MatmulCounter) if isinstance(res, np.ndarray) else res


def count_matmuls(fn, *args):
    """``(multiply-adds, result)`` of ``fn(*args)`` with its array arguments counted."""
    MatmulCounter.total = 0
    out = fn(*[a.view(MatmulCounter) if isinstance(a, np.ndarray) else a for a in args])
    return MatmulCounter.total, out
