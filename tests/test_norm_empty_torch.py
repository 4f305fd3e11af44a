"""Empty inputs and too few values, against PyTorch: which calls are errors, which give an
empty output, and what happens to the running statistics and the gradients."""

import numpy as np
import pytest

import fastdl
from fastdl import nn

torch = pytest.importorskip("torch")
F = torch.nn.functional



def outcome(call):
    """('ok', result) or ('error', message) of a call that may raise ValueError."""
    try:
        return "ok", call()
    except ValueError as exc:
        return "error", str(exc)


def torch_grads(fn, x, w, b):
    """(y, dx, dw, db) of torch's fn on copies, with grad_output = ones."""
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tw = torch.from_numpy(w.copy()).requires_grad_(True)
    tb = torch.from_numpy(b.copy()).requires_grad_(True)
    try:
        y = fn(tx, tw, tb)
        y.backward(torch.ones_like(y))
    except IndexError:
        # torch's batch/instance norm with weight and bias fails on some empty shapes
        # (N = 0 or C = 0): the forward without them gives the reference shape, and NaN
        # marks "no reference" for param_grads
        y = fn(torch.from_numpy(x.copy()), None, None)
        nan = np.full(w.shape, np.nan)
        return y.numpy(), np.zeros_like(x), nan, nan
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


def param_grads(got, want):
    """Weight/bias gradients of an empty input are sums over no elements: zero.  torch
    agrees where its autograd runs and gives a number (group norm over empty spatial dims
    gives NaN)."""
    np.testing.assert_array_equal(got, np.zeros_like(got))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[finite], want[finite])


# N = 0, no spatial elements, no channels; exactly one value per channel is an error
BATCH_SHAPES = [(0, 3), (0, 3, 4), (0, 3, 4, 5), (2, 3, 0), (0, 3, 0), (1, 3, 0), (2, 0, 4),
                (0, 0), (1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 0), (1, 0, 1)]


@pytest.mark.parametrize("shape", BATCH_SHAPES, ids=str)
def test_batch_norm_training_empty_and_single(shape, backend):
    C = shape[1]
    x = np.zeros(shape)
    w, b = np.full(C, 2.0), np.full(C, 0.5)
    rm, rv = np.full(C, 0.25), np.full(C, 3.0)
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    kind, want = outcome(lambda: torch_grads(
        lambda tx, tw, tb: F.batch_norm(tx, trm, trv, tw, tb, True), x, w, b))
    got_kind, got = outcome(lambda: fastdl.batch_norm(x, rm, rv, w, b, True, backend=backend))
    assert got_kind == kind, (got, want)
    bwd_kind, grads = outcome(lambda: fastdl.batch_norm_backward(
        np.ones(shape), x, None, None, w, b, True, backend=backend))
    assert bwd_kind == kind
    if kind == "error":
        assert "more than 1 value per channel when training" in got
        assert "more than 1 value per channel when training" in want
        assert "more than 1 value per channel when training" in grads
        return
    ty, tdx, tdw, tdb = want
    assert got.shape == ty.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(rm, trm.numpy())        # untouched, as torch leaves them
    np.testing.assert_array_equal(rv, trv.numpy())
    np.testing.assert_array_equal(rm, np.full(C, 0.25))
    np.testing.assert_array_equal(rv, np.full(C, 3.0))
    dx, dw, db = grads
    assert dx.shape == tdx.shape
    param_grads(dw, tdw)
    param_grads(db, tdb)


@pytest.mark.parametrize("cls,shape", [(("BatchNorm1d", (0, 3))), ("BatchNorm1d", (0, 3, 5)),
                                       ("BatchNorm2d", (0, 3, 4, 4)),
                                       ("BatchNorm3d", (0, 3, 2, 2, 2))], ids=str)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_layer_empty_batch(cls, shape, momentum, backend):
    tlayer = getattr(torch.nn, cls)(3, momentum=momentum, dtype=torch.float64)
    layer = nn.BatchNorm(3, momentum=momentum, dtype=np.float64, backend=backend)
    x = np.zeros(shape)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = tlayer(tx)
    ty.backward(torch.ones_like(ty))
    y = layer(x)
    dx = layer.backward(np.ones(shape))
    assert y.shape == tuple(ty.shape) and dx.shape == tuple(tx.grad.shape)
    np.testing.assert_array_equal(layer.running_mean, tlayer.running_mean.numpy())
    np.testing.assert_array_equal(layer.running_var, tlayer.running_var.numpy())
    assert layer.num_batches_tracked == int(tlayer.num_batches_tracked)
    np.testing.assert_array_equal(layer.grads["weight"], tlayer.weight.grad.numpy())
    np.testing.assert_array_equal(layer.grads["bias"], tlayer.bias.grad.numpy())
    # one real batch afterwards: same running statistics as torch (momentum=None counts
    # the empty batch, as torch does)
    x2 = np.random.default_rng(0).standard_normal((4,) + shape[1:])
    layer(x2)
    tlayer(torch.from_numpy(x2))
    np.testing.assert_allclose(layer.running_mean, tlayer.running_mean.detach().numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(layer.running_var, tlayer.running_var.detach().numpy(),
                               rtol=1e-12)


def test_batch_norm_layer_one_value_per_channel_is_an_error():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.zeros(1, 3))
    layer = nn.BatchNorm(3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(np.zeros((1, 3), np.float32))
    assert layer.num_batches_tracked == 0
    np.testing.assert_array_equal(layer.running_mean, 0)


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 3, 0), (0, 3, 0), (2, 0, 4), (0, 3, 1),
                                   (2, 3, 1), (2, 3)], ids=str)
def test_instance_norm_empty_and_single(shape, backend):
    C = shape[1]
    x = np.zeros(shape)
    w, b = np.full(C, 2.0), np.full(C, 0.5)
    kind, want = outcome(lambda: torch_grads(
        lambda tx, tw, tb: F.instance_norm(tx, weight=tw, bias=tb), x, w, b))
    got_kind, got = outcome(lambda: fastdl.instance_norm(x, None, None, w, b, backend=backend))
    assert got_kind == kind, (got, want)
    bwd_kind, grads = outcome(lambda: fastdl.instance_norm_backward(
        np.ones(shape), x, None, None, w, b, backend=backend))
    assert bwd_kind == kind
    if kind == "error":
        assert "more than 1 spatial element" in got and "more than 1 spatial element" in want
        return
    ty, tdx, tdw, tdb = want
    assert got.shape == ty.shape
    assert grads[0].shape == tdx.shape
    param_grads(grads[1], tdw)
    param_grads(grads[2], tdb)


def test_instance_norm_empty_batch_keeps_running_stats(backend):
    """torch turns the running statistics into NaN here (the mean over zero instances);
    fastdl leaves them as they are, as batch norm does for an empty batch."""
    rm, rv = np.full(3, 0.25), np.full(3, 3.0)
    y = fastdl.instance_norm(np.zeros((0, 3, 4)), rm, rv, backend=backend)
    assert y.shape == (0, 3, 4)
    np.testing.assert_array_equal(rm, 0.25)
    np.testing.assert_array_equal(rv, 3.0)


@pytest.mark.parametrize("shape,ns", [((0, 4), (4,)), ((2, 0), (0,)), ((0, 0), (0,)),
                                      ((3, 0, 2), (0, 2)), ((0, 3, 4), (3, 4))], ids=str)
def test_layer_and_rms_norm_empty(shape, ns, backend):
    x = np.zeros(shape)
    w, b = np.full(ns, 2.0), np.full(ns, 0.5)
    ty, tdx, tdw, tdb = torch_grads(lambda tx, tw, tb: F.layer_norm(tx, ns, tw, tb), x, w, b)
    y, stats = fastdl.layer_norm(x, ns, w, b, return_stats=True, backend=backend)
    assert y.shape == ty.shape and stats.rstd.shape == shape[:len(shape) - len(ns)]
    dx, dw, db = fastdl.layer_norm_backward(np.ones(shape), x, ns, w, b, backend=backend)
    assert dx.shape == tdx.shape
    param_grads(dw, tdw)
    param_grads(db, tdb)
    ty, tdx, tdw, _ = torch_grads(lambda tx, tw, tb: F.rms_norm(tx, ns, tw) + 0 * tb.sum(),
                                  x, w, b)
    y = fastdl.rms_norm(x, ns, w, backend=backend)
    assert y.shape == ty.shape
    dx, dw, _ = fastdl.rms_norm_backward(np.ones(shape), x, ns, w, backend=backend)
    assert dx.shape == tdx.shape
    param_grads(dw, tdw)


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0), (2, 0, 3)], ids=str)
def test_group_norm_empty(shape, backend):
    C = shape[1]
    x = np.zeros(shape)
    w, b = np.full(C, 2.0), np.full(C, 0.5)
    ty, tdx, tdw, tdb = torch_grads(lambda tx, tw, tb: F.group_norm(tx, 2, tw, tb), x, w, b)
    y = fastdl.group_norm(x, 2, w, b, backend=backend)
    assert y.shape == ty.shape
    dx, dw, db = fastdl.group_norm_backward(np.ones(shape), x, 2, w, b, backend=backend)
    assert dx.shape == tdx.shape
    param_grads(dw, tdw)
    param_grads(db, tdb)
