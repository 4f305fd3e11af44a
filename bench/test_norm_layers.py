"""pytest-benchmark view of the normalization-layer cases (forward with out=,
backward with saved statistics): ``pytest bench/ --benchmark-only``.

The same cases as ``fastdl bench --only norm/``; use that command for ratios
to NumPy, PyTorch and the memory-traffic limit.
"""
import pytest

ONLY = "norm/*"


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_norm_layers(benchmark, case, backend, inputs_cache):
    if case.name not in inputs_cache:
        inputs_cache[case.name] = case.setup()
    inp = inputs_cache[case.name]
    benchmark.extra_info.update(bytes=case.bytes_read + case.bytes_written, **case.params)
    benchmark(case.call, inp, backend)
