"""bf16 compute against bitsandbytes' fused CPU 4-bit GEMV (its AVX512-BF16 path):
on the same Gaussian weights and inputs, fastdl's error against the float64 product
of its own dequantized weights is not larger than bitsandbytes' against its own."""
import numpy as np
import pytest

from fastdl.quant import quantize
from fastdl.testing import rng_for

_qbf16 = pytest.importorskip("fastdl._backends.cython._qbf16")
torch = pytest.importorskip("torch")
bnbf = pytest.importorskip("bitsandbytes.functional")

pytestmark = pytest.mark.skipif(not _qbf16.bf16_available()[0],
                                reason=f"bf16 compute unavailable: {_qbf16.bf16_available()[1]}")


def bnb_fused_gemv(w, x):
    """bitsandbytes' fused CPU NF4 GEMV (double quantization, blocks of 64): the
    weight repacked as Linear4bit does for CPU inference, bfloat16 x; returns
    (y float64, its dequantized weight (d_in, d_out) float64)."""
    wt = torch.from_numpy(np.ascontiguousarray(w.T))
    qw, qs = bnbf.quantize_4bit(wt, blocksize=64, quant_type="nf4", compress_statistics=True)
    deq = bnbf.dequantize_4bit(qw, qs).float().numpy().astype(np.float64).T
    if not hasattr(bnbf, "_convert_weight_packed_for_cpu"):
        pytest.skip("this bitsandbytes has no fused CPU 4-bit GEMV")
    pw, ps = bnbf._convert_weight_packed_for_cpu(qw, qs)
    y = bnbf.gemv_4bit(torch.from_numpy(x).to(torch.bfloat16), pw, state=ps)
    return y.float().numpy().astype(np.float64), deq


def _rel(y, ref):
    return np.linalg.norm(y - ref) / np.linalg.norm(ref), \
        np.max(np.abs(y - ref)) / np.sqrt(np.mean(ref ** 2))


@pytest.mark.parametrize("n", [1, 4])
def test_accuracy_at_least_bitsandbytes(n):
    rng = rng_for("bf16 vs bnb", n)
    d_in, d_out = 1024, 1024
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    x = rng.standard_normal((n, d_in)).astype(np.float32)
    q = quantize(w, bits=4, scheme="nf4", block_size=64, double_quant=True)
    y = _qbf16.bf16_qmatmul(x, q).astype(np.float64)
    ours = _rel(y, x.astype(np.float64) @ q.dequantize().astype(np.float64))
    yb, deq = bnb_fused_gemv(w, x)
    theirs = _rel(yb, x.astype(np.float64) @ deq)
    assert ours[0] <= theirs[0] and ours[1] <= theirs[1], (ours, theirs)
    # and both are bf16-level errors, far from the quantization error itself
    assert 5e-4 < ours[0] < 4e-3
