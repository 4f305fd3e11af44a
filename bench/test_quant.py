"""pytest-benchmark view of the quantization cases (qmatmul for n in 1..512 and
quantize, 4096x4096): ``pytest bench/ --benchmark-only``.

The same cases as ``fastdl bench --only quant``; use that command for ratios
to NumPy, PyTorch (float32 and dynamic int8) and the read limit.
"""
import pytest

ONLY = "quant/*"


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_quant(run_bench, case, backend):
    run_bench(case, backend)
