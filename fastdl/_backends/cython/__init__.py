"""The Cython backend: OpenMP + run-time-dispatched SIMD kernels.

Importing this package loads the compiled extensions; if they are missing the
registry lists the backend with the import error and falls back to NumPy.
"""
import os

import numpy as np

from fastdl._threads import get_num_threads
from fastdl._backends.cython import _cpu, _norm_stats
from fastdl.registry import Backend

if os.environ.get("FASTDL_SIMD"):
    _cpu.set_simd_level(os.environ["FASTDL_SIMD"].strip().lower())


def norm_stats(x, kind, num_groups, ddof):
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)    # strided and Fortran inputs: one packing copy
    return _norm_stats.norm_stats(x, kind, num_groups, ddof, get_num_threads())


backend = Backend(name="cython", ops={"norm_stats": norm_stats})
