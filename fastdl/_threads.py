"""Thread count used by the OpenMP kernels (global, like torch.set_num_threads).

The count is an upper bound.  Each parallel region of a kernel uses at most as
many threads as it has independent work units, runs on the calling thread when
its work is below a grain (about 64 KiB), and, when other processes keep the
CPUs busy, uses only the CPUs they leave free (``FASTDL_ADAPTIVE_THREADS=0``
turns that off).  Results never depend on the number of threads, except that
``qmatmul`` with many rows gives OpenBLAS the same count, and OpenBLAS groups
its sums by it (agreement to rounding there).

Counts above ``MAX_THREADS`` = max(64, 4 x the CPUs of the machine) are
rejected: memory- and compute-bound kernels gain nothing past one thread per
core, each thread costs a stack and a share of every join, and thread counts in
the tens of thousands exhaust the OpenMP runtime.  The floor of 64 keeps
moderate oversubscription (tests of odd counts, containers whose CPU quota is
smaller than the CPUs they see) possible on small machines.
"""
from __future__ import annotations

import os

from fastdl._validate import check_int

MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))

_num_threads: int | None = None


def _check(n, what: str) -> int:
    return check_int(n, what, minimum=1, maximum=MAX_THREADS,
                     maximum_text=f"{MAX_THREADS} (fastdl's bound: max(64, 4 x the "
                                  f"{os.cpu_count()} CPUs))")


def _default() -> int:
    raw = os.environ.get("FASTDL_NUM_THREADS", "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError("FASTDL_NUM_THREADS must be a positive integer at most "
                             f"{MAX_THREADS}, got {raw!r}") from None
        return _check(n, "FASTDL_NUM_THREADS")
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_THREADS))


def set_num_threads(n: int) -> None:
    """Most threads a kernel uses, 1 to ``MAX_THREADS`` (results do not depend on it)."""
    n = _check(n, "n")
    global _num_threads
    _num_threads = n


def get_num_threads() -> int:
    """Current thread count: set_num_threads, else env FASTDL_NUM_THREADS, else the CPUs available."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default()
    return _num_threads
