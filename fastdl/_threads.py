"""Thread count used by the OpenMP kernels (global, like torch.set_num_threads)."""
from __future__ import annotations

import os

_num_threads: int | None = None


def _default() -> int:
    raw = os.environ.get("FASTDL_NUM_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"FASTDL_NUM_THREADS must be a positive integer, got {raw!r}") from None
        if n < 1:
            raise ValueError(f"FASTDL_NUM_THREADS must be a positive integer, got {raw!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_num_threads(n: int) -> None:
    """Number of threads the kernels use (results do not depend on it)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    global _num_threads
    _num_threads = n


def get_num_threads() -> int:
    """Current thread count: set_num_threads, else env FASTDL_NUM_THREADS, else the CPUs available."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default()
    return _num_threads
