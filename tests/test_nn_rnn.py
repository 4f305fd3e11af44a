"""fastdl.nn.BiRNN: the layer's conventions (params/grads shared with BiRNNParams, backward
overwrites, zero_grad, reset_parameters, repr), the plain model and its defaults written out by
hand, a training loop that fits a task needing both directions, and hypothesis properties: any
layout of x (batch-first, strided, Fortran order) gives what the time-major C-contiguous call
gives, bit for bit."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdl
import fastdl.nn as nn
from fastdl import rnn as F
from _rnn_helpers import assert_close, rnn_backend, rnn_backends  # noqa: F401 (a fixture)
from fastdl.testing import rng_for


def test_defaults_are_the_plain_model():
    """d_out = hidden, no biases, float32, time-major: the three equations without biases."""
    layer = nn.BiRNN(4, 4, rng=0)
    assert (layer.d_in, layer.hidden, layer.d_out) == (4, 4, 4)
    assert layer.bias is False and layer.batch_first is False and layer.dtype == np.float32
    assert list(layer.params) == ["W_f", "U_f", "V_f", "W_b", "U_b", "V_b"]
    p = F.BiRNNParams.init(4, 4)
    assert p.d_out == 4 and not p.bias and p.dtype == np.float32


@pytest.mark.parametrize("bias", [False, True])
def test_forward_is_the_equations(bias, rnn_backend):
    """y_t = V_f h_t^(f) + V_b h_t^(b) (+ c), the recursions written out for T = 3, d = 3."""
    d, T = 3, 3
    layer = nn.BiRNN(d, d, bias=bias, dtype=np.float64, backend=rnn_backend, rng=1)
    p = layer.params
    g = rng_for("equations", bias)
    x = g.standard_normal((T, d))
    h0f, h0b = g.standard_normal(d), g.standard_normal(d)
    b = (lambda n: p[n] if bias else 0)
    hf, hb = [None] * T, [None] * T
    prev = h0f
    for t in range(T):
        hf[t] = prev = np.tanh(p["W_f"] @ x[t] + p["U_f"] @ prev + b("b_f"))
    prev = h0b
    for t in reversed(range(T)):
        hb[t] = prev = np.tanh(p["W_b"] @ x[t] + p["U_b"] @ prev + b("b_b"))
    want = np.array([p["V_f"] @ hf[t] + p["V_b"] @ hb[t] + b("c") for t in range(T)])
    assert_close(layer(x, h0f, h0b), want, np.float64, "y")


def test_params_are_the_rnn_params_arrays():
    layer = nn.BiRNN(3, 4, 2, bias=True, rng=0)
    rp = layer.rnn_params
    assert isinstance(rp, F.BiRNNParams)
    for name, a in layer.params.items():
        assert getattr(rp, name) is a
        assert layer.grads[name].shape == a.shape and layer.grads[name].dtype == a.dtype
    x = rng_for("inplace").standard_normal((5, 3)).astype(np.float32)
    y0 = layer(x)
    layer.params["c"] += 1                              # an in-place update trains the layer
    np.testing.assert_allclose(layer(x), y0 + 1, rtol=1e-6)


def test_backward_overwrites_and_zero_grad(rnn_backend):
    layer = nn.BiRNN(3, 4, bias=True, dtype=np.float64, backend=rnn_backend, rng=0)
    g = rng_for("overwrite")
    x, dy = g.standard_normal((6, 2, 3)), g.standard_normal((6, 2, 4))
    layer(x)
    dx1 = layer.backward(dy)
    first = {n: a.copy() for n, a in layer.grads.items()}
    ids = {n: id(a) for n, a in layer.grads.items()}
    dx2 = layer.backward(dy)                            # not accumulated
    np.testing.assert_array_equal(dx1, dx2)
    for n, a in layer.grads.items():
        np.testing.assert_array_equal(a, first[n])
        assert id(a) == ids[n]                           # the same arrays, filled
        assert a.any()
    assert layer.dh0_f.shape == layer.dh0_b.shape == (2, 4)
    assert layer.dh0_f.any() and layer.dh0_b.any()
    layer.zero_grad()
    assert not any(a.any() for a in layer.grads.values())
    assert not layer.dh0_f.any() and not layer.dh0_b.any()


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        nn.BiRNN(2, 3).backward(np.zeros((4, 3), np.float32))


def test_backward_differentiates_the_last_forward(rnn_backend):
    layer = nn.BiRNN(2, 3, dtype=np.float64, backend=rnn_backend, rng=0)
    g = rng_for("last forward")
    xa, xb = g.standard_normal((4, 2)), g.standard_normal((7, 2))
    layer(xa)
    layer(xb)
    assert layer.backward(np.ones((7, 3))).shape == (7, 2)
    with pytest.raises(ValueError, match=r"dy must have shape \(7, 3\)"):
        layer.backward(np.ones((4, 3)))


def test_reset_parameters_in_place_and_reproducible():
    a, b = nn.BiRNN(3, 5, bias=True, rng=7), nn.BiRNN(3, 5, bias=True, rng=7)
    for n in a.params:
        np.testing.assert_array_equal(a.params[n], b.params[n])
    ids = {n: id(p) for n, p in a.params.items()}
    before = {n: p.copy() for n, p in a.params.items()}
    a.reset_parameters()                           # the layer's own generator: new draws
    assert {n: id(p) for n, p in a.params.items()} == ids
    assert all(not np.array_equal(a.params[n], before[n]) for n in a.params)
    a.reset_parameters(rng=3)
    c = nn.BiRNN(3, 5, bias=True, rng=3)
    for n in a.params:
        np.testing.assert_array_equal(a.params[n], c.params[n])
        assert np.abs(a.params[n]).max() <= 1 / np.sqrt(5)


def test_init_distribution():
    """uniform in ±1/sqrt(hidden) for every array, whatever d_in and d_out (torch's bound)."""
    H = 64
    p = F.BiRNNParams.init(5, H, 7, bias=True, rng=0, dtype=np.float64)
    s = 1 / np.sqrt(H)
    for n, a in p.arrays().items():
        assert np.abs(a).max() <= s, n
    w = np.concatenate([a.ravel() for a in p.arrays().values()])
    assert np.abs(w).max() > 0.99 * s
    assert w.mean() == pytest.approx(0, abs=0.02 * s)
    assert w.std() == pytest.approx(s / np.sqrt(3), rel=0.02)
    counts, _ = np.histogram(w, bins=8, range=(-s, s))          # flat, not bell-shaped
    assert counts.min() > 0.85 * counts.mean()


def test_repr_train_eval_backend():
    layer = nn.BiRNN(3, 4, 2, bias=True, batch_first=True, dtype="float64")
    assert repr(layer) == "BiRNN(3, 4, 2, bias=True, batch_first=True, dtype=float64)"
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    layer.backend = "numpy"
    assert layer.backend == "numpy" and "backend='numpy'" in repr(layer)
    with pytest.raises(ValueError, match="nope"):
        layer.backend = "nope"
    with pytest.raises(TypeError, match="backend must be a backend name"):
        nn.BiRNN(3, 4, backend=3)
    assert "BiRNN" in nn.__all__ and fastdl.nn.BiRNN is nn.BiRNN


def test_loss_and_grads_is_forward_and_backward(rnn_backend):
    layer = nn.BiRNN(3, 4, 2, bias=True, batch_first=True, dtype=np.float64,
                     backend=rnn_backend, rng=2)
    g = rng_for("loss_and_grads")
    x, z = g.standard_normal((3, 5, 3)), g.standard_normal((3, 5, 2))
    lengths = np.array([5, 2, 3])
    loss, grads = layer.loss_and_grads(x, z, lengths=lengths)
    want_loss, want = F.birnn_loss_and_grads(x, z, layer.rnn_params, lengths=lengths,
                                             batch_first=True, backend=rnn_backend)
    assert loss == want_loss
    for n, a in want.params().items():
        np.testing.assert_array_equal(grads[n], a, err_msg=n)
    np.testing.assert_array_equal(layer.dh0_f, want.h0_f)
    # the kept forward is this one: backward(dy) with loss_and_grads' dy gives the same
    y = layer(x, lengths=lengths)
    valid = (np.arange(5)[None, :] < lengths[:, None])[..., None]
    layer.backward(-2 * (z - y) * valid)
    for n, a in want.params().items():
        np.testing.assert_array_equal(layer.grads[n], a, err_msg=n)


def test_without_torch_state_dict_works_and_to_torch_says_why():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fastdl.nn as nn\n"
            "layer = nn.BiRNN(3, 4, bias=True, rng=0)\n"
            "sd = layer.to_torch_state_dict()\n"
            "print(sorted(sd['rnn'])[0], sd['linear']['weight'].shape)\n"
            "try:\n    layer.to_torch()\nexcept ImportError as e:\n    print(e)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=root).stdout
    assert out.splitlines()[0] == "bias_hh_l0 (4, 8)"
    assert "BiRNN.to_torch needs torch, which is not installed" in out


# ---------------------------------------------------------------- training

def fit_past_and_future_sums(steps, backend=None):
    """The README's example: at each step, the sum of the inputs so far and the sum of the
    inputs still to come (a task that needs both directions).  Test MSE every 150 steps."""
    T, B = 10, 32
    rng = np.random.default_rng(0)

    def batch():
        x = rng.uniform(-1, 1, (T, B, 1)).astype(np.float32)
        past = np.cumsum(x, axis=0)                       # x_1 + ... + x_t
        to_come = np.cumsum(x[::-1], axis=0)[::-1]        # x_t + ... + x_T
        return x, np.concatenate([past, to_come], axis=2)

    layer = fastdl.nn.BiRNN(1, 32, 2, bias=True, rng=0, backend=backend)
    x_test, z_test = batch()
    mse = [np.mean((layer(x_test) - z_test) ** 2)]
    lr = 0.01 / (T * B)                                   # the loss sums T*B squared errors
    for step in range(1, steps + 1):
        x, z = batch()
        loss, grads = layer.loss_and_grads(x, z)
        for name, p in layer.params.items():
            p -= lr * grads[name]                         # in place: trains the layer
        if step % 150 == 0:
            mse.append(np.mean((layer(x_test) - z_test) ** 2))
    return mse


def test_training_fits_past_and_future_sums(rnn_backend):
    mse = fit_past_and_future_sums(300, rnn_backend)
    assert mse[0] > 1.5                                   # the targets' own scale
    assert mse[1] < mse[0] / 10 and mse[2] < mse[0] / 30, mse


# ---------------------------------------------------------------- layouts (hypothesis)

def _layouts(a, how):
    """a (C-contiguous) in another memory layout with the same values."""
    if how == "fortran":
        return np.asfortranarray(a)
    if how == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)[..., ::2]
        big[...] = a
        return big
    if how == "reversed":
        return a[::-1].copy()[::-1]
    return a


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 5), B=st.integers(1, 4), I=st.integers(1, 4), H=st.integers(1, 5),
       O=st.integers(1, 3), dtype=st.sampled_from([np.float32, np.float64]),
       bias=st.booleans(), batch_first=st.booleans(), with_h0=st.booleans(),
       with_lengths=st.booleans(), unbatched=st.booleans(),
       how=st.sampled_from(["fortran", "strided", "reversed", "plain"]),
       backend=st.sampled_from(rnn_backends()), seed=st.integers(0, 2 ** 16))
def test_any_layout_equals_time_major_call(T, B, I, H, O, dtype, bias, batch_first, with_h0,
                                           with_lengths, unbatched, how, backend, seed):
    g = np.random.default_rng(seed)
    params = F.BiRNNParams.init(I, H, O, bias=bias, rng=g, dtype=dtype)
    if unbatched:
        B, with_lengths = 1, False
    xt = g.standard_normal((T, B, I)).astype(dtype)        # time-major reference
    dyt = g.standard_normal((T, B, O)).astype(dtype)
    h0 = [g.standard_normal((B, H)).astype(dtype) for _ in range(2)] if with_h0 else [None] * 2
    lengths = g.integers(1, T + 1, B) if with_lengths else None
    y_ref, c_ref = F.birnn_forward(xt, params, *h0, lengths=lengths, backend=backend)
    g_ref = F.birnn_backward(c_ref, dyt)

    def caller(a):
        if unbatched:
            return a[:, 0]
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if batch_first else a

    x = _layouts(caller(xt), how)
    dy = _layouts(caller(dyt), how)
    h0c = [None if h is None else (h[0] if unbatched else _layouts(h, how)) for h in h0]
    x_before = x.copy()
    layer = nn.BiRNN(I, H, O, bias=bias, batch_first=batch_first, dtype=dtype, backend=backend)
    for n, a in params.arrays().items():
        layer.params[n][...] = a
    y = layer(x, *h0c, lengths=lengths)
    np.testing.assert_array_equal(y, caller(y_ref))
    np.testing.assert_array_equal(layer.backward(dy), caller(g_ref.x))
    np.testing.assert_array_equal(x, x_before)
    for n, a in g_ref.params().items():
        np.testing.assert_array_equal(layer.grads[n], a, err_msg=n)
    for got, want in ((layer.dh0_f, g_ref.h0_f), (layer.dh0_b, g_ref.h0_b)):
        np.testing.assert_array_equal(got, want[0] if unbatched else want)
    # the functional API with the same layout
    y2, c2 = F.birnn_forward(x, params, *h0c, lengths=lengths, batch_first=batch_first,
                             backend=backend)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(F.birnn_backward(c2, dy).x, caller(g_ref.x))
