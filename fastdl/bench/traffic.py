"""Memory-traffic limit: time of plain reads/copies of the same number of bytes.

The limit is the fastest of several plain streams measured in the same run, so
"x / limit" compares a kernel against the best this machine showed just then.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from fastdl._threads import get_num_threads


def _traffic_module():
    try:
        from fastdl._backends.cython import _traffic
        return _traffic
    except ImportError:
        return None


def limit_thunks(bytes_read: int, bytes_written: int) -> dict[str, Callable[[], object]]:
    """Named thunks that stream ``bytes_read`` in (and ``bytes_written`` out)."""
    tr = _traffic_module()
    nthreads = get_num_threads()
    src = np.ones(max(bytes_read, 8) // 4, dtype=np.float32)   # touched: pages mapped
    thunks: dict[str, Callable[[], object]] = {}
    if bytes_written < bytes_read // 100:          # essentially a reduction: a read
        thunks["np.max"] = src.max
        if tr is not None:
            raw = src.view(np.uint8)
            thunks["read"] = lambda: tr.read(raw, nthreads)
        return thunks
    nw = min(bytes_written, bytes_read) // 4
    dst = np.zeros(max(bytes_written, 8) // 4, dtype=np.float32)
    rest = src[nw:]
    thunks["np.copyto"] = lambda: (np.copyto(dst[:nw], src[:nw]), rest.max() if rest.size else 0)
    if tr is not None:
        s8, d8, r8 = src[:nw].view(np.uint8), dst[:nw].view(np.uint8), rest.view(np.uint8)
        thunks["copy"] = lambda: (tr.copy(d8, s8, nthreads), tr.read(r8, nthreads))
    return thunks
