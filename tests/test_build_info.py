"""build_info, thread settings and the traffic helpers."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdl
from fastdl._backends.cython import _traffic

ROOT = Path(__file__).resolve().parents[1]


def test_build_info_fields():
    info = fastdl.build_info()
    for key in ("version", "compiler", "openmp", "simd_detected", "simd_active", "numpy",
                "scipy", "numpy_blas", "num_threads"):
        assert key in info, key
    assert info["version"] == fastdl.__version__
    assert info["simd_active"] in ("avx512", "avx2", "scalar")


def test_set_num_threads_validates():
    old = fastdl.get_num_threads()
    try:
        fastdl.set_num_threads(1)
        assert fastdl.get_num_threads() == 1
        with pytest.raises(ValueError, match="n must be >= 1, got 0"):
            fastdl.set_num_threads(0)
        with pytest.raises(TypeError, match="n must be an int"):
            fastdl.set_num_threads(2.5)
    finally:
        fastdl.set_num_threads(old)


def _run(code, **env):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def test_num_threads_from_env():
    r = _run("import fastdl; print(fastdl.get_num_threads())", FASTDL_NUM_THREADS="3")
    assert r.stdout.strip() == "3", r.stderr
    r = _run("import fastdl; fastdl.get_num_threads()", FASTDL_NUM_THREADS="zero")
    assert "FASTDL_NUM_THREADS must be a positive integer" in r.stderr


def test_simd_level_from_env():
    r = _run("import fastdl; print(fastdl.build_info()['simd_active'])", FASTDL_SIMD="scalar")
    assert r.stdout.strip() == "scalar", r.stderr


@pytest.mark.parametrize("value", ["bogus", "avx1024", " "])
def test_invalid_simd_level_from_env_warns_and_keeps_the_backend(value):
    """The Cython backend stays loaded at the detected level; build_info() works."""
    code = ("import warnings, fastdl\n"
            "warnings.simplefilter('always')\n"
            "from fastdl._backends.cython import _cpu\n"
            "info = fastdl.build_info()\n"
            "print(fastdl.which_backend('layer_norm_fwd')[0], info['simd_active'],"
            " info['simd_detected'], fastdl.backends()['cython'].error)\n")
    r = _run(code, FASTDL_SIMD=value)
    assert r.returncode == 0, r.stderr
    backend, active, detected, error = r.stdout.split()
    assert (backend, error) == ("cython", "None")
    assert active == detected
    assert "RuntimeWarning" in r.stderr and f"FASTDL_SIMD={value!r}" in r.stderr
    assert "valid values here: 'scalar'" in r.stderr
    assert f"using the detected level {detected!r}" in r.stderr


def test_traffic_helpers_touch_every_byte():
    buf = np.zeros(1_000_003, dtype=np.uint8)
    buf[-1] = 0x80
    assert _traffic.read(buf, 2) & 0x80
    dst = np.empty_like(buf)
    _traffic.copy(dst, buf, 2)
    np.testing.assert_array_equal(dst, buf)
    with pytest.raises(ValueError, match="dst must have"):
        _traffic.copy(dst[:-1], buf, 1)
