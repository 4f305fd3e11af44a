"""pytest-benchmark view of the decoding cases (beam_topk, topk, beam search end
to end): ``pytest bench/ --benchmark-only``.

The same cases as ``fastdl bench --only decode``; use that command for ratios
to NumPy, PyTorch, ``np.argpartition`` + sort and the single-read limit.
"""
import pytest

ONLY = "decode/*"


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_decode(run_bench, case, backend):
    run_bench(case, backend)
