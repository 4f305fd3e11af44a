"""The int8-activation path against PyTorch's dynamic int8 Linear (the peer that also
multiplies int8 activations by int8 weights): on the same Gaussian weights and inputs,
both measured against float64 ``x @ W``, fastdl's error (int8 weights in blocks of 64,
activations in blocks of 32) is below torch's (per-tensor weight and activation scales)."""
import warnings

import numpy as np
import pytest

from fastdl import quant
from fastdl.testing import rng_for

torch = pytest.importorskip("torch")
pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _qint8  # noqa: E402


def _torch_dynamic(w):
    lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                      dtype=torch.qint8)


@pytest.mark.parametrize("n", [1, 64])
def test_error_below_torch_dynamic_int8(n):
    rng = rng_for("torch int8", n)
    d_in, d_out = 512, 256
    w = (rng.standard_normal((d_in, d_out)) * 0.05).astype(np.float32)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64)
    q = quant.quantize(w, bits=8, block_size=64)
    out = np.empty((n, d_out), np.float32)
    _qint8.int8_qmatmul(x, q, out, 1)
    with torch.no_grad():
        yt = _torch_dynamic(w)(torch.from_numpy(x)).numpy().astype(np.float64)
    rms = lambda e: float(np.sqrt(np.mean(e ** 2)))  # noqa: E731
    ours, theirs = rms(out - exact), rms(yt - exact)
    # torch's own error is real (the comparison means something) and larger than ours
    assert theirs > 1e-3 * rms(exact)
    assert ours < theirs, (ours, theirs)
