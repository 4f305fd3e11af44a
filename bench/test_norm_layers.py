"""pytest-benchmark view of the normalization-layer cases (forward with out=,
backward with saved statistics): ``pytest bench/ --benchmark-only``.

The same cases as ``fastdl bench --only norm/``; use that command for ratios
to NumPy, PyTorch and the memory-traffic limit.
"""
import pytest

ONLY = "norm/*"


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_norm_layers(run_bench, case, backend):
    run_bench(case, backend)
