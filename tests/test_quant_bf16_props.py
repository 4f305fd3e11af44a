"""bf16 compute over random shapes and formats (hypothesis): the kernel equals its
scalar emulation bit for bit and both stay within the stated bound of the NumPy
float64 reference."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from fastdl.quant import SCHEMES, quantize

_qbf16 = pytest.importorskip("fastdl._backends.cython._qbf16")
from fastdl._backends.numpy import quant_bf16 as ref  # noqa: E402


@st.composite
def cases(draw):
    d_in = draw(st.integers(1, 400))
    d_out = draw(st.integers(1, 11))
    n = draw(st.integers(1, 4))
    # signmax where this build's quantize has it (its units are decoded as absmax's)
    scheme = draw(st.sampled_from([s for s in ("absmax", "signmax", "nf4") if s in SCHEMES]))
    bits = 4 if scheme == "nf4" else draw(st.integers(2, 8))
    bs = draw(st.sampled_from([None, 32, 64, 96, 128, 256]))
    dq = bs is not None and scheme != "signmax" and draw(st.booleans())   # signmax: no dq
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return d_in, d_out, n, scheme, bits, bs, dq, seed


@settings(max_examples=60, deadline=None)
@given(cases())
def test_random_formats(case):
    d_in, d_out, n, scheme, bits, bs, dq, seed = case
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((d_in, d_out)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    x = (rng.standard_normal((n, d_in)) * 10.0 ** rng.uniform(-3, 3)).astype(np.float32)
    q = quantize(w, bits=bits, scheme=scheme, block_size=bs, double_quant=dq)
    y = _qbf16.bf16_qmatmul(x, q, emulate=True)
    err = np.abs(y.astype(np.float64) - ref.bf16_qmatmul_reference(x, q))
    assert np.all(err <= ref.kernel_bound(x, q))
    if _qbf16.bf16_available()[0]:
        yk = _qbf16.bf16_qmatmul(x, q, nthreads=2)
        np.testing.assert_array_equal(yk.view(np.uint32), y.view(np.uint32))
