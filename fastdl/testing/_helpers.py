"""Test helpers: seeded generators, SIMD-level and thread-count contexts, bitwise
comparison."""
import contextlib
import zlib

import numpy as np

import fastdl


BUILTIN_BACKENDS = ("numpy", "cython")


def rng_for(*key):
    """A generator seeded by the test's own parameters (stable across runs)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def simd_levels(scalar=True):
    """SIMD levels the Cython kernels can run at on this machine, lowest first
    (``["scalar"]`` when the compiled backend is missing); ``scalar=False``: only the
    SIMD tiers (what is compared with the scalar twins)."""
    try:
        from fastdl._backends.cython import _cpu
    except ImportError:
        return ["scalar"] if scalar else []
    top = _cpu.LEVELS[_cpu.detected_simd()]
    return [n for n, v in sorted(_cpu.LEVELS.items(), key=lambda kv: kv[1])
            if v <= top and (scalar or n != "scalar")]


def has_simd(level):
    """Whether the kernels can run at ``level`` ("avx2", "avx512") here."""
    return level in simd_levels()


@contextlib.contextmanager
def simd(level):
    """Run the Cython kernels at SIMD ``level`` ("scalar", "avx2" or "avx512") inside the block."""
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


@contextlib.contextmanager
def fixed_teams():
    """Team sizes from the thread count alone inside the block: no grain (small regions
    run on every thread too) and no load adaptation (a BLAS call's thread count, which
    groups its sums, stays the same between two runs compared bitwise)."""
    from fastdl._backends.cython import _cpu
    grain, adaptive = _cpu.set_grain(0), _cpu.set_load_adaptive(False)
    try:
        yield
    finally:
        _cpu.set_grain(grain)
        _cpu.set_load_adaptive(adaptive)


def bitwise_equal(a, b) -> bool:
    """Same shape, dtype and bits (so -0.0 != +0.0, and NaNs compare by payload)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return bool(np.array_equal(a.view(view), b.view(view)))


def requires_simd(level):
    """A pytest mark that skips a test where the kernels cannot run at ``level``."""
    import pytest
    return pytest.mark.skipif(not has_simd(level), reason=f"no {level} on this CPU/build")
