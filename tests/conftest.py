"""Fixtures every test module shares: the backend, SIMD level and thread count a test
runs at, and the restoring of global state after each test."""
import pytest

import fastdl
from fastdl.testing import BUILTIN_BACKENDS, simd, simd_levels, threads

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


@pytest.fixture(params=BUILTIN_BACKENDS)
def backend(request):
    """Each built-in backend by name (skipped when it failed to load here)."""
    info = fastdl.backends().get(request.param)
    if info is None or info.error:
        pytest.skip(f"backend {request.param!r} is not available: {info and info.error}")
    return request.param


@pytest.fixture(params=simd_levels())
def simd_level(request):
    """Each SIMD level this machine runs, active for the test."""
    with simd(request.param):
        yield request.param


@pytest.fixture(params=[1, 2, 3])
def nthreads(request):
    """1, 2 and 3 threads, active for the test."""
    with threads(request.param):
        yield request.param


@pytest.fixture
def pristine_registry(monkeypatch):
    """Fresh registry, default env, before and after the test (the registry modules use it
    for every test)."""
    from _registry_helpers import reset_registry
    monkeypatch.delenv("FASTDL_BACKEND", raising=False)
    monkeypatch.delenv("FASTDL_STRICT", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def rec():
    """A factory of throwaway backends that record their calls."""
    from _registry_helpers import Recorder
    return Recorder()
