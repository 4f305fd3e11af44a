"""Shared by the tests/test_nn_rnn.py, test_rnn_torch.py and test_rnn_errors.py modules: the
backends that have the bidirectional RNN ops, and a tolerance per dtype."""
import numpy as np
import pytest

import fastdl
from fastdl.registry import BackendNotImplementedError
from fastdl.testing import BUILTIN_BACKENDS

# float32 work sums T*B products per gradient entry: relative to the largest entry
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def rnn_backends():
    """The built-in backends that load here and run birnn_fwd and birnn_bwd."""
    out = []
    for name in BUILTIN_BACKENDS:
        info = fastdl.backends().get(name)
        if info is None or info.error:
            continue
        try:
            for op in ("birnn_fwd", "birnn_bwd"):
                fastdl.which_backend(op, backend=name)
        except BackendNotImplementedError:
            continue
        out.append(name)
    return out


@pytest.fixture(params=BUILTIN_BACKENDS)
def rnn_backend(request):
    """Each built-in backend by name, skipped where it is missing or lacks the RNN ops."""
    if request.param not in rnn_backends():
        pytest.skip(f"backend {request.param!r} is not available or has no birnn ops")
    return request.param


def assert_close(got, want, dtype, name="", scale=None):
    """Entries within TOL[dtype] of want, relative to want's largest entry."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    tol = TOL[np.dtype(dtype)]
    s = max(1.0, float(np.max(np.abs(want)))) if scale is None else scale
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * s, err_msg=name)
