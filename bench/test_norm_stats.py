"""pytest-benchmark view of the norm_stats cases: ``pytest bench/ --benchmark-only``.

The same cases as ``fastdl bench``; use that command for ratios to NumPy,
PyTorch and the memory-traffic limit.
"""
import pytest

OP = "norm_stats"


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_norm_stats(run_bench, case, backend):
    run_bench(case, backend)
