"""Fixtures every test module shares."""
import pytest

import fastdl

try:
    from fastdl._backends.cython import _cpu
except ImportError:          # no compiled backend: nothing of its state to restore
    _cpu = None


@pytest.fixture(autouse=True)
def _restore_global_state():
    """A test that changes the SIMD level or the thread count cannot leak it."""
    level = _cpu.active_simd() if _cpu is not None else None
    nt = fastdl.get_num_threads()
    yield
    if _cpu is not None:
        _cpu.set_simd_level(level)
    fastdl.set_num_threads(nt)
