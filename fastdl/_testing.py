"""Helpers for fastdl's own tests: seeded generators, SIMD-level and thread-count
contexts (so every test module does not write them again)."""
import contextlib
import zlib

import numpy as np

import fastdl


def rng_for(*key):
    """A generator seeded by the test's own parameters (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@contextlib.contextmanager
def simd(level):
    """Run the Cython kernels at SIMD ``level`` ("scalar" or "avx2") inside the block."""
    from fastdl._backends.cython import _cpu
    old = _cpu.set_simd_level(level)
    try:
        yield
    finally:
        _cpu.set_simd_level(old)


@contextlib.contextmanager
def threads(n):
    old = fastdl.get_num_threads()
    fastdl.set_num_threads(n)
    try:
        yield
    finally:
        fastdl.set_num_threads(old)
