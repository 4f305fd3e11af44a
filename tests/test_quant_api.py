"""The user-facing rules of fastdl.quant: block-wise by default, ``x @ q`` and
``np.asarray(q)``, ``(*, d_in)`` inputs as torch's Linear takes them, and plain ndarrays
for the backends whatever array subclass the caller holds."""
import numpy as np
import pytest

import fastdl
from fastdl import quant
from fastdl.quant import NF4_CODEBOOK, QuantizedTensor, dequantize, qmatmul, quantize

from fastdl.testing import rng_for



def outlier_weights():
    """Typical small weights and one outlier of 1.0."""
    w = rng_for("outlier").standard_normal((256, 64)).astype(np.float32) * np.float32(0.02)
    w[0, 0] = 1.0
    return w


def rel_err(w, q):
    """Relative error of every weight but the outlier."""
    d = dequantize(q).astype(np.float64)
    keep = np.ones(w.shape, bool)
    keep[0, 0] = False
    return np.linalg.norm((d - w)[keep]) / np.linalg.norm(w[keep])


# ---------------------------------------------------------------- defaults

@pytest.mark.parametrize("kw", [dict(bits=4), dict(bits=8), dict(bits=3),
                                dict(bits=4, scheme="nf4")], ids=str)
def test_default_is_blocks_of_64(backend, kw):
    w = outlier_weights()
    q = quantize(w, backend=backend, **kw)
    assert q.block_size == 64 and q.nblocks == 4 and q.scales.shape == (64, 4)
    ref = quantize(w, block_size=64, backend=backend, **kw)
    np.testing.assert_array_equal(q.data, ref.data)
    np.testing.assert_array_equal(q.scales, ref.scales)
    # one outlier only coarsens its own block
    assert rel_err(w, q) < 0.3
    per_tensor = quantize(w, block_size=None, backend=backend, **kw)
    assert per_tensor.block_size is None and per_tensor.scales.shape == (1,)
    if kw["bits"] <= 4:
        assert rel_err(w, per_tensor) > 0.9 > 3 * rel_err(w, q)


def test_outlier_example_from_the_report(backend):
    # int4 with one scale for the tensor: every other weight rounds to 0
    w = outlier_weights()
    assert rel_err(w, quantize(w, 4, block_size=None, backend=backend)) > 0.99
    assert rel_err(w, quantize(w, 4, backend=backend)) < 0.2


def test_nf4_per_tensor(backend):
    w = rng_for("nf4-tensor").standard_normal((70, 5)).astype(np.float32)
    q = quantize(w, 4, scheme="nf4", block_size=None, backend=backend)
    assert q.block_size is None and q.nblocks == 1 and q.scales.shape == (1,)
    s = np.abs(w).max()
    assert q.scales[0] == s
    deq = dequantize(q, backend=backend)
    # every value is the codebook entry nearest to w / s, times s
    v = (w / s).astype(np.float32)
    nearest = NF4_CODEBOOK[np.abs(v[..., None] - NF4_CODEBOOK).argmin(axis=-1)]
    np.testing.assert_array_equal(deq, (s * nearest).astype(np.float32))
    other = quantize(w, 4, scheme="nf4", block_size=None,
                     backend="numpy" if backend == "cython" else "cython")
    np.testing.assert_array_equal(q.data, other.data)
    with pytest.raises(ValueError, match="double_quant=True needs"):
        quantize(w, 4, scheme="nf4", block_size=None, double_quant=True)


def test_nf4_floor_rounding_is_an_error():
    w = np.ones((4, 4), np.float32)
    for bs in (64, None, 2):
        with pytest.raises(ValueError, match="rounding='floor'.*scheme='nf4'"):
            quantize(w, 4, scheme="nf4", block_size=bs, rounding="floor")
    q = quantize(w, 4, scheme="nf4")
    with pytest.raises(ValueError, match="rounding='floor'.*scheme='nf4'"):
        QuantizedTensor(q.shape, 4, "nf4", 64, "floor", q.data, q.scales)


def test_formula_needs_the_per_tensor_floor_arguments(backend):
    # W~ = floor(W / Δ), Δ = max|W| / (2^(m-1) - 1) over the tensor: the default blocks
    # and rounding differ from it, block_size=None and rounding="floor" give it
    w = np.array([[1.0, -0.5, 0.25], [0.75, -1.0, 0.1], [0.3, 0.2, -0.05]], np.float32)
    q = quantize(w, 8, block_size=None, rounding="floor", backend=backend)
    delta = np.float32(1) / np.float32(127)
    np.testing.assert_array_equal(q.data.T, np.floor(w / delta).astype(np.int8))
    assert not np.array_equal(quantize(w, 8, backend=backend).data, q.data)


# ---------------------------------------------------------------- x @ q, np.asarray(q)

@pytest.mark.parametrize("kw", [dict(bits=4), dict(bits=8, block_size=None),
                                dict(bits=4, scheme="nf4", double_quant=True)], ids=str)
def test_matmul_operator_is_qmatmul(backend, kw):
    w = rng_for("op", str(kw)).standard_normal((96, 40)).astype(np.float32)
    q = quantize(w, backend=backend, **kw)
    deq = dequantize(q).astype(np.float64)
    rng = rng_for("op-x")
    for shape in [(96,), (3, 96), (2, 5, 96), (0, 96), (2, 0, 96)]:
        x = rng.standard_normal(shape).astype(np.float32)
        with fastdl.registry.use_backend(backend, only=True):
            y = x @ q
        np.testing.assert_array_equal(y, qmatmul(x, q, backend=backend))
        assert y.shape == shape[:-1] + (40,) and y.dtype == np.float32
        np.testing.assert_allclose(y, x.astype(np.float64) @ deq, rtol=1e-4,
                                   atol=1e-5 * np.abs(deq).sum(0).max())
    x = rng.standard_normal((3, 96))
    np.testing.assert_allclose(x.tolist() @ q, x @ deq, rtol=1e-10)       # lists too
    # q @ y = dequantize(q) @ y
    for shape in [(40,), (40, 3), (2, 40, 3)]:
        y = rng.standard_normal(shape)
        got = q @ y
        assert got.shape == (deq @ y).shape
        np.testing.assert_allclose(got, deq @ y, rtol=1e-10, atol=1e-12 * np.abs(deq).sum())
    with pytest.raises(ValueError, match="inner dimensions"):
        np.ones((2, 40)) @ q
    with pytest.raises(ValueError, match=r"\(\.\.\., 40, n\)"):
        q @ np.ones((96, 2))
    with pytest.raises(TypeError):
        q @ q


def test_asarray_is_the_dequantized_matrix():
    q = quantize(rng_for("arr").standard_normal((65, 7)), 4)
    a = np.asarray(q)
    assert type(a) is np.ndarray and a.dtype == np.float32 and a.shape == (65, 7)
    np.testing.assert_array_equal(a, dequantize(q))
    np.testing.assert_array_equal(np.asarray(q, np.float64), dequantize(q, np.float64))
    assert np.asarray(q, np.float16).dtype == np.float16
    np.testing.assert_array_equal(np.array(q), a)
    assert a is not np.asarray(q) and a.flags.writeable
    with pytest.raises(ValueError, match="copy=False.*dequantiz"):
        np.array(q, copy=False)
    with pytest.raises(ValueError, match="copy=False"):
        np.asarray(q, copy=False)
    np.testing.assert_array_equal(np.asarray(q, copy=True), a)


# ---------------------------------------------------------------- (*, d_in) as torch.nn.Linear

def test_leading_dimensions_like_torch_linear(backend):
    torch = pytest.importorskip("torch")
    w = rng_for("lin").standard_normal((48, 24)).astype(np.float32)
    q = quantize(w, 8, backend=backend)
    deq = dequantize(q)
    lin = torch.nn.Linear(48, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(deq.T)))
    rng = rng_for("lin-x")
    for shape in [(48,), (5, 48), (2, 3, 48), (2, 1, 3, 48), (0, 48), (0, 3, 48), (3, 0, 48)]:
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            want = lin(torch.from_numpy(x)).numpy()
        got = qmatmul(x, q, backend=backend)
        assert got.shape == want.shape, shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        out = np.full(want.shape, np.nan, np.float32)
        assert qmatmul(x, q, out=out, backend=backend) is out
        np.testing.assert_array_equal(out, got)
        # the transposed product takes (*, d_out) the same way
        t = rng.standard_normal(shape[:-1] + (24,))
        np.testing.assert_allclose(qmatmul(t, q, transpose=True, backend=backend),
                                   t @ deq.T.astype(np.float64), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 3, 24\)"):
        qmatmul(np.ones((2, 3, 48)), q, out=np.empty((6, 24)))


def test_strided_leading_dimensions(backend):
    q = quantize(rng_for("strided").standard_normal((32, 8)), 4, block_size=16)
    x = rng_for("strided-x").standard_normal((4, 6, 64))[:, ::2, ::2]
    np.testing.assert_allclose(qmatmul(x, q, backend=backend), x @ dequantize(q, np.float64),
                               rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- array subclasses

@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")      # np.matrix
def test_matrix_inputs_reach_backends_as_plain_arrays(backend, monkeypatch):
    seen = []
    inner = fastdl.registry.dispatch

    def spy(op, args, kwargs, b=None):
        seen.append((op, type(args[0])))
        return inner(op, args, kwargs, b)

    w = rng_for("sub").standard_normal((8, 4))
    ref = quantize(w, 8, backend=backend)
    x = rng_for("sub-x").standard_normal((3, 8))
    want = qmatmul(x, ref, backend=backend)
    monkeypatch.setattr(fastdl.registry, "dispatch", spy)
    for wi in (np.matrix(w), np.asarray(w).view(type("Sub", (np.ndarray,), {}))):
        q = quantize(wi, 8, backend=backend)
        np.testing.assert_array_equal(q.data, ref.data)
    for xi in (np.matrix(x), np.asarray(x).view(type("Sub", (np.ndarray,), {}))):
        y = qmatmul(xi, ref, backend=backend)
        assert type(y) is np.ndarray
        np.testing.assert_array_equal(y, want)
        with fastdl.registry.use_backend(backend, only=True):
            y2 = xi @ ref
        assert type(y2) is np.ndarray
        np.testing.assert_array_equal(y2, want)
    assert len(seen) == 6 and all(t is np.ndarray for _, t in seen), seen


def test_masked_arrays_are_an_error():
    w = np.ma.masked_array(np.ones((4, 4)), mask=np.eye(4, dtype=bool))
    w.data[0, 0] = 1e30                        # hidden behind the mask
    with pytest.raises(TypeError, match="w must not be a numpy masked array"):
        quantize(w, 4)
    with pytest.raises(TypeError, match="w must not be a numpy masked array"):
        quantize(np.ma.masked_array(np.ones((4, 4))), 4)      # no entry masked: still refused
    q = quantize(np.ones((4, 4)), 4)
    x = np.ma.masked_array(np.ones((2, 4)), mask=[[0, 1, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(TypeError, match="x must not be a numpy masked array"):
        qmatmul(x, q)
    with pytest.raises(TypeError, match="x must not be a numpy masked array"):
        x @ q
