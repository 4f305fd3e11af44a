"""fastdl.nn.BiRNN and fastdl.rnn against torch.nn.RNN(bidirectional=True) + torch.nn.Linear with
autograd: the same weights give the same outputs and every gradient (parameters, h0, x) of the
sum-of-squares loss, batched, unbatched, batch-first, with h0 and with packed (padded) batches;
from_torch / to_torch_state_dict / to_torch round trips and the refusals of what the layer
cannot represent."""
import numpy as np
import pytest

import fastdl.nn as nn
from fastdl import rnn as F
from _rnn_helpers import assert_close, rnn_backend  # noqa: F401 (a fixture)
from fastdl.testing import rng_for

torch = pytest.importorskip("torch")
TDT = {np.float32: torch.float32, np.float64: torch.float64}


def torch_pair(d_in, H, d_out, *, bias, lin_bias=None, batch_first=False, dtype=np.float64,
               key=()):
    """A torch RNN and Linear with seeded random weights (wider than torch's init, so tanh
    saturates somewhere and the bias terms matter)."""
    rnn = torch.nn.RNN(d_in, H, bidirectional=True, nonlinearity="tanh", bias=bias,
                       batch_first=batch_first, dtype=TDT[dtype])
    lin = None
    if d_out is not None:
        lin = torch.nn.Linear(2 * H, d_out, bias=bias if lin_bias is None else lin_bias,
                              dtype=TDT[dtype])
    g = rng_for("torch_pair", d_in, H, d_out, bias, lin_bias, batch_first, *key)
    with torch.no_grad():
        for m in (rnn, lin):
            for p in (m.parameters() if m is not None else ()):
                p.copy_(torch.from_numpy(g.uniform(-0.8, 0.8, tuple(p.shape))))
    return rnn, lin


def torch_run(rnn, lin, x, z, h0=None, lengths=None):
    """torch's y and the gradients of L = sum over the real steps of (z - y)^2."""
    for m in (rnn, lin):
        if m is not None:
            m.zero_grad()
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    th0 = None if h0 is None else torch.from_numpy(h0.copy()).requires_grad_(True)
    bf = rnn.batch_first
    if lengths is None:
        out, _ = rnn(tx, th0)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            tx, torch.from_numpy(lengths), batch_first=bf, enforce_sorted=False)
        out, _ = rnn(packed, th0)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf,
                                                        total_length=x.shape[1 if bf else 0])
    y = out if lin is None else lin(out)
    r = torch.from_numpy(z) - y
    if lengths is not None:
        T = x.shape[1 if bf else 0]
        valid = torch.from_numpy(np.arange(T)[:, None] < lengths[None, :])   # (T, B)
        r = r * (valid.T if bf else valid)[..., None]
    loss = (r ** 2).sum()
    loss.backward()
    return y.detach().numpy(), loss.item(), tx.grad.numpy(), (None if th0 is None
                                                               else th0.grad.numpy())


def torch_param_grads(rnn, lin, H):
    """torch's gradients under fastdl's names (the two biases have one gradient each)."""
    g = {"W_f": rnn.weight_ih_l0.grad, "U_f": rnn.weight_hh_l0.grad,
         "W_b": rnn.weight_ih_l0_reverse.grad, "U_b": rnn.weight_hh_l0_reverse.grad}
    if rnn.bias:
        g["b_f"], g["b_b"] = rnn.bias_ih_l0.grad, rnn.bias_ih_l0_reverse.grad
        assert torch.allclose(rnn.bias_ih_l0.grad, rnn.bias_hh_l0.grad, rtol=1e-5, atol=1e-4)
    if lin is not None:
        g["V_f"], g["V_b"] = lin.weight.grad[:, :H], lin.weight.grad[:, H:]
        if lin.bias is not None:
            g["c"] = lin.bias.grad
    return {k: v.numpy() for k, v in g.items()}


def valid_mask(T, B, lengths, batch_first):
    v = np.ones((T, B), bool) if lengths is None else np.arange(T)[:, None] < lengths[None]
    return v.T if batch_first else v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_layer_matches_torch_autograd(dtype, bias, batch_first, with_h0, with_lengths,
                                      rnn_backend):
    T, B, I, H, O = 6, 4, 3, 5, 2
    rnn, lin = torch_pair(I, H, O, bias=bias, batch_first=batch_first, dtype=dtype)
    layer = nn.BiRNN.from_torch(rnn, lin, backend=rnn_backend)
    assert layer.batch_first == batch_first and layer.dtype == dtype and layer.bias == bias
    g = rng_for("layer_vs_torch", dtype, bias, batch_first, with_h0, with_lengths)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = g.standard_normal(shape).astype(dtype)
    z = g.standard_normal(shape[:2] + (O,)).astype(dtype)
    h0 = g.uniform(-1, 1, (2, B, H)).astype(dtype) if with_h0 else None
    lengths = np.array([T, 1, 4, 2], np.int64) if with_lengths else None
    ty, tloss, tdx, tdh0 = torch_run(rnn, lin, x, z, h0, lengths)

    y = layer(x, *((h0[0], h0[1]) if with_h0 else ()), lengths=lengths)
    valid = valid_mask(T, B, lengths, batch_first)
    assert_close(y[valid], ty[valid], dtype, "y")
    assert not y[~valid].any()                      # outputs past a length are 0
    dy = -2 * (z - y) * valid[..., None]
    dx = layer.backward(dy)
    assert_close(dx, tdx, dtype, "dx")
    want = torch_param_grads(rnn, lin, H)
    assert set(want) == set(layer.grads)
    for name, w in want.items():
        assert_close(layer.grads[name], w, dtype, name)
    if with_h0:
        assert_close(layer.dh0_f, tdh0[0], dtype, "dh0_f")
        assert_close(layer.dh0_b, tdh0[1], dtype, "dh0_b")

    # loss_and_grads: the same loss and parameter gradients in one call
    layer.zero_grad()
    loss, grads = layer.loss_and_grads(x, z, *((h0[0], h0[1]) if with_h0 else ()),
                                       lengths=lengths)
    assert grads is layer.grads
    assert loss == pytest.approx(tloss, rel=50 * float(np.finfo(dtype).eps) * T)
    for name, w in want.items():
        assert_close(grads[name], w, dtype, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
def test_functional_api_matches_torch(dtype, bias, rnn_backend):
    """birnn_loss_and_grads with the weights of from_torch, time-major with lengths."""
    T, B, I, H, O = 5, 3, 4, 3, 4
    rnn, lin = torch_pair(I, H, O, bias=bias, dtype=dtype, key=("functional",))
    params = nn.BiRNN.from_torch(rnn, lin).rnn_params
    g = rng_for("functional", dtype, bias)
    x = g.standard_normal((T, B, I)).astype(dtype)
    z = g.standard_normal((T, B, O)).astype(dtype)
    h0 = g.uniform(-1, 1, (2, B, H)).astype(dtype)
    lengths = np.array([2, 5, 3], np.int64)
    ty, tloss, tdx, tdh0 = torch_run(rnn, lin, x, z, h0, lengths)
    loss, grads = F.birnn_loss_and_grads(x, z, params, h0[0], h0[1], lengths=lengths,
                                         backend=rnn_backend)
    assert loss == pytest.approx(tloss, rel=50 * float(np.finfo(dtype).eps) * T)
    for name, w in torch_param_grads(rnn, lin, H).items():
        assert_close(getattr(grads, name), w, dtype, name)
    assert_close(grads.x, tdx, dtype, "x")
    assert_close(np.stack([grads.h0_f, grads.h0_b]), tdh0, dtype, "h0")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_matches_torch(dtype, bias, batch_first, rnn_backend):
    """torch's unbatched (T, I) input with h0 of shape (2, H), whatever batch_first says."""
    T, I, H, O = 7, 2, 4, 3
    rnn, lin = torch_pair(I, H, O, bias=bias, batch_first=batch_first, dtype=dtype,
                          key=("unbatched",))
    layer = nn.BiRNN.from_torch(rnn, lin, backend=rnn_backend)
    g = rng_for("unbatched", dtype, bias)
    x = g.standard_normal((T, I)).astype(dtype)
    z = g.standard_normal((T, O)).astype(dtype)
    h0 = g.uniform(-1, 1, (2, H)).astype(dtype)
    ty, _, tdx, tdh0 = torch_run(rnn, lin, x, z, h0)
    y = layer(x, h0[0], h0[1])
    assert_close(y, ty, dtype, "y")
    assert_close(layer.backward(-2 * (z - y)), tdx, dtype, "dx")
    assert layer.dh0_f.shape == (H,)
    assert_close(np.stack([layer.dh0_f, layer.dh0_b]), tdh0, dtype, "h0")
    for name, w in torch_param_grads(rnn, lin, H).items():
        assert_close(layer.grads[name], w, dtype, name)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_without_linear_y_is_torch_output(bias, batch_first, rnn_backend):
    """linear=None: d_out = 2*hidden and y = [h_f, h_b], torch's output, gradients included."""
    T, B, I, H = 5, 3, 2, 4
    rnn, _ = torch_pair(I, H, None, bias=bias, batch_first=batch_first, key=("nolinear",))
    layer = nn.BiRNN.from_torch(rnn, backend=rnn_backend)
    assert layer.d_out == 2 * H and layer.bias == bias
    np.testing.assert_array_equal(layer.params["V_f"], np.eye(2 * H, H))
    np.testing.assert_array_equal(layer.params["V_b"], np.eye(2 * H, H, -H))
    g = rng_for("nolinear", bias, batch_first)
    shape = (B, T, I) if batch_first else (T, B, I)
    x = g.standard_normal(shape)
    z = g.standard_normal(shape[:2] + (2 * H,))
    lengths = np.array([3, 5, 1], np.int64)
    ty, _, tdx, _ = torch_run(rnn, None, x, z, lengths=lengths)
    y = layer(x, lengths=lengths)
    assert_close(y, ty, np.float64, "y")            # both 0 past the lengths
    dx = layer.backward(-2 * (z - y) * valid_mask(T, B, lengths, batch_first)[..., None])
    assert_close(dx, tdx, np.float64, "dx")
    for name, w in torch_param_grads(rnn, None, H).items():
        assert_close(layer.grads[name], w, np.float64, name)


@pytest.mark.parametrize("rnn_bias,lin_bias", [(True, False), (False, True)])
def test_bias_in_only_one_module(rnn_bias, lin_bias, rnn_backend):
    """The layer has biases when either torch module has; the missing ones are zeros."""
    T, B, I, H, O = 4, 2, 3, 3, 2
    rnn, lin = torch_pair(I, H, O, bias=rnn_bias, lin_bias=lin_bias, key=("one bias",))
    layer = nn.BiRNN.from_torch(rnn, lin, backend=rnn_backend)
    assert layer.bias
    zero = ("c",) if rnn_bias else ("b_f", "b_b")
    for name in zero:
        assert not layer.params[name].any()
    g = rng_for("one bias", rnn_bias)
    x, z = g.standard_normal((T, B, I)), g.standard_normal((T, B, O))
    ty, _, tdx, _ = torch_run(rnn, lin, x, z)
    y = layer(x)
    assert_close(y, ty, np.float64, "y")
    assert_close(layer.backward(-2 * (z - y)), tdx, np.float64, "dx")


def test_from_torch_combines_the_two_biases_and_copies():
    rnn, lin = torch_pair(3, 4, 2, bias=True, key=("copy",))
    layer = nn.BiRNN.from_torch(rnn, lin)
    np.testing.assert_array_equal(
        layer.params["b_f"], (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().numpy())
    np.testing.assert_array_equal(
        layer.params["b_b"], (rnn.bias_ih_l0_reverse + rnn.bias_hh_l0_reverse).detach().numpy())
    np.testing.assert_array_equal(layer.params["W_b"], rnn.weight_ih_l0_reverse.detach().numpy())
    before = rnn.weight_ih_l0.detach().clone()
    layer.params["W_f"] += 1                        # no memory shared with torch
    with torch.no_grad():
        rnn.weight_hh_l0.add_(1)
    assert torch.equal(rnn.weight_ih_l0, before)
    assert not np.array_equal(layer.params["U_f"], rnn.weight_hh_l0.detach().numpy())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_through_torch(bias, batch_first, dtype):
    """to_torch() builds modules that compute the layer's y; from_torch of them gives the
    layer's parameters back exactly; the state dict has torch's names and shapes."""
    layer = nn.BiRNN(3, 4, 5, bias=bias, batch_first=batch_first, dtype=dtype, rng=1)
    sd = layer.to_torch_state_dict()
    rnn, lin = layer.to_torch()
    assert rnn.batch_first == batch_first and rnn.bias == bias and lin.weight.dtype == TDT[dtype]
    assert list(sd["rnn"]) == [n for n, _ in rnn.named_parameters()]
    assert set(sd["linear"]) == {n for n, _ in lin.named_parameters()}
    for k, v in rnn.state_dict().items():
        assert isinstance(sd["rnn"][k], np.ndarray) and sd["rnn"][k].shape == tuple(v.shape)
    back = nn.BiRNN.from_torch(rnn, lin)
    for name, a in layer.params.items():
        np.testing.assert_array_equal(back.params[name], a, err_msg=name)
    x = rng_for("round trip", bias).standard_normal((2, 6, 3) if batch_first else (6, 2, 3))
    x = x.astype(dtype)
    with torch.no_grad():
        ty = lin(rnn(torch.from_numpy(x))[0]).numpy()
    assert_close(layer(x), ty, dtype, "y")
    np.testing.assert_array_equal(back(x), layer(x))
    sd["rnn"]["weight_ih_l0"][...] = 0             # a copy: the layer is unchanged
    assert layer.params["W_f"].any()


def test_round_trip_from_torch_to_torch_same_outputs():
    rnn, lin = torch_pair(2, 3, 4, bias=True, batch_first=True, key=("rt",))
    rnn2, lin2 = nn.BiRNN.from_torch(rnn, lin).to_torch()
    x = torch.from_numpy(rng_for("rt").standard_normal((3, 5, 2)))
    with torch.no_grad():
        np.testing.assert_allclose(lin2(rnn2(x)[0]).numpy(), lin(rnn(x)[0]).numpy(),
                                   rtol=1e-14, atol=1e-14)


def test_torch_init_bound_matches():
    """BiRNNParams.init draws as torch's reset_parameters: |w| <= 1/sqrt(hidden), spread
    filling the interval (torch's own init checked against the same bound).  V_f and V_b
    each read one direction's hidden states, so they are drawn as a Linear(hidden, d_out);
    torch's Linear(2*hidden, d_out) on the concatenation would use 1/sqrt(2*hidden)."""
    H = 16
    rnn = torch.nn.RNN(8, H, bidirectional=True)
    lin = torch.nn.Linear(H, H)
    theirs = np.concatenate([p.detach().numpy().ravel()
                             for p in list(rnn.parameters()) + list(lin.parameters())])
    ours = np.concatenate([a.ravel() for a in
                           F.BiRNNParams.init(8, H, bias=True, rng=0).arrays().values()])
    bound = 1 / np.sqrt(H)
    for w in (theirs, ours):
        assert np.abs(w).max() <= bound
        assert np.abs(w).max() > 0.95 * bound
        assert np.std(w) == pytest.approx(bound / np.sqrt(3), rel=0.1)


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("kwargs,match", [
    (dict(bidirectional=False), "bidirectional=True"),
    (dict(num_layers=2), "num_layers=1"),
    (dict(nonlinearity="relu"), "nonlinearity='tanh'"),
])
def test_from_torch_refuses_what_it_cannot_represent(kwargs, match):
    rnn = torch.nn.RNN(3, 4, **{"bidirectional": True, **kwargs})
    with pytest.raises(ValueError, match=match):
        nn.BiRNN.from_torch(rnn)


def test_from_torch_refusals_of_modules():
    rnn = torch.nn.RNN(3, 4, bidirectional=True)
    rnn.proj_size = 2                          # torch refuses it at construction for an RNN
    with pytest.raises(ValueError, match="proj_size=0"):
        nn.BiRNN.from_torch(rnn)
    rnn = torch.nn.RNN(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="in_features = 2 \\* hidden_size = 8.*got 4"):
        nn.BiRNN.from_torch(rnn, torch.nn.Linear(4, 2))
    with pytest.raises(TypeError, match="rnn must be a torch.nn.RNN, got LSTM"):
        nn.BiRNN.from_torch(torch.nn.LSTM(3, 4, bidirectional=True))
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        nn.BiRNN.from_torch(rnn, torch.nn.Conv1d(8, 2, 1))
    with pytest.raises(TypeError, match="linear must have the rnn's dtype"):
        nn.BiRNN.from_torch(rnn, torch.nn.Linear(8, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or torch.float64, got torch.bfloat16"):
        nn.BiRNN.from_torch(torch.nn.RNN(3, 4, bidirectional=True, dtype=torch.bfloat16))

