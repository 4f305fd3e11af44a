"""fastdl.nn: the normalization layer classes over the functional API."""
import numpy as np
import pytest

import fastdl
import fastdl.nn as nn

# "numpy": the reference backend, named strictly.  None: the default resolution
# (the compiled kernels when they implement the op, else numpy), so these tests
# follow the Cython kernels as they land without depending on them.
BACKENDS = ["numpy", None]


def rng(seed=0):
    return np.random.default_rng(seed)


def randomize(layer, seed=1):
    """Non-trivial parameters, set in place as an optimizer would."""
    g = rng(seed)
    for p in layer.params.values():
        p[...] = g.standard_normal(p.shape)
    return layer


def close(a, b, tol=1e-6):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------- layer == functional

def _bn_functional(layer, x, dy, backend):
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    y, st = fastdl.batch_norm(x, rm, rv, layer.weight, layer.bias, True, 0.1, 1e-5,
                              return_stats=True, backend=backend)
    grads = fastdl.batch_norm_backward(dy, x, None, None, layer.weight, layer.bias, True,
                                       stats=st, backend=backend)
    return y, grads, (rm, rv)


def _in_functional(layer, x, dy, backend):
    y, st = fastdl.instance_norm(x, None, None, layer.weight, layer.bias, True, 0.1, 1e-5,
                                 return_stats=True, backend=backend)
    grads = fastdl.instance_norm_backward(dy, x, weight=layer.weight, bias=layer.bias,
                                          stats=st, backend=backend)
    return y, grads, None


def _ln_functional(layer, x, dy, backend):
    y, st = fastdl.layer_norm(x, (3, 4), layer.weight, layer.bias, 1e-5, return_stats=True,
                              backend=backend)
    grads = fastdl.layer_norm_backward(dy, x, (3, 4), layer.weight, layer.bias, 1e-5, stats=st,
                                       backend=backend)
    return y, grads, None


def _gn_functional(layer, x, dy, backend):
    y, st = fastdl.group_norm(x, 2, layer.weight, layer.bias, 1e-5, return_stats=True,
                              backend=backend)
    grads = fastdl.group_norm_backward(dy, x, 2, layer.weight, layer.bias, 1e-5, stats=st,
                                       backend=backend)
    return y, grads, None


def _rms_functional(layer, x, dy, backend):
    y, st = fastdl.rms_norm(x, (3, 4), layer.weight, None, return_stats=True, backend=backend)
    grads = fastdl.rms_norm_backward(dy, x, (3, 4), layer.weight, None, stats=st,
                                     backend=backend)
    return y, grads, None


LAYERS = {
    "batch": (lambda b: nn.BatchNorm(4, backend=b), _bn_functional),
    "instance": (lambda b: nn.InstanceNorm(4, affine=True, backend=b), _in_functional),
    "layer": (lambda b: nn.LayerNorm((3, 4), backend=b), _ln_functional),
    "group": (lambda b: nn.GroupNorm(2, 4, backend=b), _gn_functional),
    "rms": (lambda b: nn.RMSNorm((3, 4), backend=b), _rms_functional),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_matches_functional(kind, backend):
    make, functional = LAYERS[kind]
    layer = randomize(make(backend))
    g = rng(2)
    x = (g.standard_normal((5, 4, 3, 4)) * 2 + 1).astype(np.float32)
    dy = g.standard_normal(x.shape).astype(np.float32)
    y_ref, (dx_ref, dw_ref, db_ref), buffers = functional(layer, x, dy, backend)

    y = layer(x)
    dx = layer.backward(dy)
    assert y.dtype == dx.dtype == np.float32 and y.shape == dx.shape == x.shape
    close(y, y_ref)
    close(dx, dx_ref)
    close(layer.grads["weight"], dw_ref)
    if db_ref is None:
        assert "bias" not in layer.grads
    else:
        close(layer.grads["bias"], db_ref)
    if buffers is not None:  # batch norm updated its running statistics like the functional
        close(layer.running_mean, buffers[0])
        close(layer.running_var, buffers[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_instance_norm_running_stats_eval_matches_functional(backend):
    layer = randomize(nn.InstanceNorm(3, affine=True, track_running_stats=True,
                                      dtype=np.float64, backend=backend))
    g = rng(3)
    layer(g.standard_normal((4, 3, 6)) + 2)
    rm, rv = layer.running_mean.copy(), layer.running_var.copy()
    x, dy = g.standard_normal((2, 3, 6)), g.standard_normal((2, 3, 6))
    y = layer.eval()(x)
    dx = layer.backward(dy)
    y_ref = fastdl.instance_norm(x, rm, rv, layer.weight, layer.bias, False, backend=backend)
    dx_ref, dw_ref, db_ref = fastdl.instance_norm_backward(dy, x, rm, rv, layer.weight,
                                                           layer.bias, False, backend=backend)
    close(y, y_ref, 1e-12)
    close(dx, dx_ref, 1e-12)
    close(layer.grads["weight"], dw_ref, 1e-12)
    close(layer.grads["bias"], db_ref, 1e-12)
    np.testing.assert_array_equal(layer.running_mean, rm)  # eval does not update
    assert layer.num_batches_tracked == 1


# ---------------------------------------------------------------- train / eval

def test_batch_norm_eval_uses_running_stats():
    layer = randomize(nn.BatchNorm(3, dtype=np.float64, backend="numpy"))
    g = rng(4)
    for _ in range(3):
        layer(g.standard_normal((8, 3, 5)) * 3 + 1)
    rm, rv, steps = layer.running_mean.copy(), layer.running_var.copy(), layer.num_batches_tracked
    assert steps == 3 and not np.allclose(rm, 0) and not np.allclose(rv, 1)

    assert layer.eval() is layer and layer.training is False
    x = g.standard_normal((2, 3, 5))
    y = layer(x)
    w, b = layer.weight[:, None], layer.bias[:, None]
    close(y, (x - rm[:, None]) / np.sqrt(rv[:, None] + 1e-5) * w + b, 1e-12)
    # eval leaves the buffers alone; backward is the affine map's gradient
    np.testing.assert_array_equal(layer.running_mean, rm)
    np.testing.assert_array_equal(layer.running_var, rv)
    assert layer.num_batches_tracked == steps
    dy = g.standard_normal(x.shape)
    close(layer.backward(dy), dy * w / np.sqrt(rv[:, None] + 1e-5), 1e-12)

    assert layer.train() is layer and layer.training is True
    y = layer(x)
    close(y.mean(axis=(0, 2)), layer.bias, 1e-9)  # batch statistics again
    assert layer.num_batches_tracked == steps + 1


def test_batch_norm_without_running_stats_always_uses_batch_stats():
    layer = nn.BatchNorm(3, track_running_stats=False, dtype=np.float64, backend="numpy")
    assert layer.running_mean is None and layer.running_var is None
    assert layer.num_batches_tracked is None
    x = rng(5).standard_normal((6, 3, 4)) * 2 + 5
    y_train = layer(x)
    y_eval = layer.eval()(x)
    np.testing.assert_array_equal(y_train, y_eval)
    close(y_eval.mean(axis=(0, 2)), 0, 1e-12)
    layer.reset_running_stats()  # a no-op without buffers


def test_backward_follows_the_mode_of_its_forward():
    layer = nn.BatchNorm(2, dtype=np.float64, backend="numpy")
    x = rng(6).standard_normal((4, 2, 3))
    dy = rng(7).standard_normal(x.shape)
    layer(x)
    dx_train = layer.backward(dy)
    layer.eval()  # switching mode after forward does not change what backward differentiates
    np.testing.assert_array_equal(layer.backward(dy), dx_train)
    # batch-statistics gradient sums to zero per channel; the eval one does not
    close(dx_train.sum(axis=(0, 2)), 0, 1e-10)


@pytest.mark.parametrize("cls", [nn.BatchNorm, nn.InstanceNorm])
def test_eval_backward_is_independent_of_later_buffer_changes(cls):
    layer = randomize(cls(3, affine=True, track_running_stats=True, dtype=np.float64,
                          backend="numpy"))
    g = rng(16)
    layer(g.standard_normal((4, 3, 5)) + 1)
    x, dy = g.standard_normal((2, 3, 5)), g.standard_normal((2, 3, 5))
    layer.eval()(x)
    dx = layer.backward(dy)
    dw = layer.grads["weight"].copy()
    layer.reset_running_stats()  # the buffers change in place between forward and backward
    np.testing.assert_array_equal(layer.backward(dy), dx)
    np.testing.assert_array_equal(layer.grads["weight"], dw)


def test_train_mode_must_be_bool():
    with pytest.raises(TypeError, match="mode"):
        nn.LayerNorm(3).train("yes")


# ---------------------------------------------------------------- running stats vs torch

@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 5), (4, 3, 5, 6)])
def test_batch_norm_matches_torch(shape, momentum):
    torch = pytest.importorskip("torch")
    tcls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)]
    ours = randomize(nn.BatchNorm(3, momentum=momentum, dtype=np.float64, backend="numpy"))
    ref = tcls(3, momentum=momentum).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(ours.weight))
        ref.bias.copy_(torch.from_numpy(ours.bias))
    g = rng(8)
    for step in range(5):
        x = g.standard_normal(shape) * (step + 1) + step
        dy = g.standard_normal(shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = ref(xt)
        yt.backward(torch.from_numpy(dy))
        close(ours(x), yt.detach().numpy(), 1e-10)
        close(ours.backward(dy), xt.grad.numpy(), 1e-10)
        close(ours.grads["weight"], ref.weight.grad.numpy(), 1e-10)  # overwritten each step,
        close(ours.grads["bias"], ref.bias.grad.numpy(), 1e-10)      # torch's accumulate:
        ref.zero_grad()
        close(ours.running_mean, ref.running_mean.numpy(), 1e-12)
        close(ours.running_var, ref.running_var.numpy(), 1e-12)
        assert ours.num_batches_tracked == int(ref.num_batches_tracked) == step + 1
    ours.eval()
    ref.eval()
    x = g.standard_normal(shape)
    close(ours(x), ref(torch.from_numpy(x)).detach().numpy(), 1e-10)


def test_batch_norm_float32_buffers_track_torch():
    torch = pytest.importorskip("torch")
    ours, ref = nn.BatchNorm(4, momentum=None, backend="numpy"), torch.nn.BatchNorm2d(4,
                                                                               momentum=None)
    g = rng(9)
    for _ in range(4):
        x = (g.standard_normal((3, 4, 5, 5)) * 4 + 2).astype(np.float32)
        ours(x)
        ref(torch.from_numpy(x))
    assert ours.running_mean.dtype == ours.running_var.dtype == np.float32
    close(ours.running_mean, ref.running_mean.numpy(), 1e-5)
    close(ours.running_var, ref.running_var.numpy(), 1e-5)


def test_instance_norm_matches_torch():
    torch = pytest.importorskip("torch")
    ours = nn.InstanceNorm(3, affine=True, track_running_stats=True, dtype=np.float64,
                           backend="numpy")
    ref = torch.nn.InstanceNorm2d(3, affine=True, track_running_stats=True).double()
    g = rng(10)
    for step in range(3):
        x = g.standard_normal((4, 3, 5, 5)) * (step + 1) + step
        close(ours(x), ref(torch.from_numpy(x)).detach().numpy(), 1e-10)
    close(ours.running_mean, ref.running_mean.numpy(), 1e-12)
    close(ours.running_var, ref.running_var.numpy(), 1e-12)
    ours.eval()
    ref.eval()
    x = g.standard_normal((2, 3, 5, 5))
    close(ours(x), ref(torch.from_numpy(x)).detach().numpy(), 1e-10)


def test_reset_running_stats_and_parameters():
    layer = randomize(nn.BatchNorm(3, backend="numpy"))
    layer(rng(11).standard_normal((4, 3)) + 3)
    layer.reset_running_stats()
    np.testing.assert_array_equal(layer.running_mean, 0)
    np.testing.assert_array_equal(layer.running_var, 1)
    assert layer.num_batches_tracked == 0
    assert not np.allclose(layer.weight, 1)
    layer(rng(11).standard_normal((4, 3)) + 3)
    layer.reset_parameters()  # as torch: parameters and running statistics
    np.testing.assert_array_equal(layer.weight, 1)
    np.testing.assert_array_equal(layer.bias, 0)
    np.testing.assert_array_equal(layer.running_mean, 0)
    assert layer.num_batches_tracked == 0
    ln = randomize(nn.LayerNorm(5))
    ln.reset_parameters()
    np.testing.assert_array_equal(ln.weight, 1)
    np.testing.assert_array_equal(ln.bias, 0)


# ---------------------------------------------------------------- params, grads, errors

@pytest.mark.parametrize("make, keys, shape", [
    (lambda: nn.BatchNorm(4), {"weight", "bias"}, (4,)),
    (lambda: nn.BatchNorm(4, affine=False), set(), None),
    (lambda: nn.InstanceNorm(4), set(), None),
    (lambda: nn.InstanceNorm(4, affine=True), {"weight", "bias"}, (4,)),
    (lambda: nn.LayerNorm((3, 4)), {"weight", "bias"}, (3, 4)),
    (lambda: nn.LayerNorm(4, bias=False), {"weight"}, (4,)),
    (lambda: nn.LayerNorm(4, elementwise_affine=False), set(), None),
    (lambda: nn.GroupNorm(2, 4), {"weight", "bias"}, (4,)),
    (lambda: nn.GroupNorm(2, 4, affine=False), set(), None),
    (lambda: nn.RMSNorm([3, 4]), {"weight"}, (3, 4)),
    (lambda: nn.RMSNorm(4, elementwise_affine=False), set(), None),
])
def test_params_and_grads_keys(make, keys, shape):
    layer = make()
    assert set(layer.params) == set(layer.grads) == keys
    for name in keys:
        assert layer.params[name].shape == layer.grads[name].shape == shape
        assert layer.params[name].dtype == layer.grads[name].dtype == np.float32
        np.testing.assert_array_equal(layer.grads[name], 0)
    assert (layer.weight is None) == ("weight" not in keys)
    assert (layer.bias is None) == ("bias" not in keys)
    if "weight" in keys:
        np.testing.assert_array_equal(layer.weight, 1)
        assert layer.weight is layer.params["weight"]
    if "bias" in keys:
        np.testing.assert_array_equal(layer.bias, 0)


def test_grads_are_overwritten_and_zero_grad():
    layer = randomize(nn.GroupNorm(2, 4, dtype=np.float64, backend="numpy"))
    g = rng(12)
    x, dy = g.standard_normal((3, 4, 5)), g.standard_normal((3, 4, 5))
    layer(x)
    layer.backward(dy)
    first = {k: v.copy() for k, v in layer.grads.items()}
    assert all(np.abs(v).sum() > 0 for v in first.values())
    layer.backward(dy)  # same forward, same grads: overwritten, not accumulated
    for k in first:
        np.testing.assert_array_equal(layer.grads[k], first[k])
    grad_arrays = dict(layer.grads)
    layer.zero_grad()
    for k, v in layer.grads.items():
        assert v is grad_arrays[k]
        np.testing.assert_array_equal(v, 0)


def test_only_the_last_forward_is_kept():
    layer = nn.LayerNorm(6, dtype=np.float64, backend="numpy")
    g = rng(13)
    x1, x2, dy = g.standard_normal((2, 6)), g.standard_normal((3, 6)), g.standard_normal((3, 6))
    layer(x1)
    layer(x2)
    dx, _, _ = fastdl.layer_norm_backward(dy, x2, 6, layer.weight, layer.bias, backend="numpy")
    np.testing.assert_array_equal(layer.backward(dy), dx)
    with pytest.raises(ValueError, match="grad_output"):
        layer.backward(np.ones((2, 6)))  # dy of the first forward's shape


def test_float64_params_with_float32_input():
    layer = randomize(nn.LayerNorm(5, dtype=np.float64, backend="numpy"))
    x = rng(14).standard_normal((4, 5)).astype(np.float32)
    y = layer(x)
    dx = layer.backward(np.ones_like(x))
    assert y.dtype == dx.dtype == np.float32
    assert layer.grads["weight"].dtype == np.float64
    close(y, fastdl.layer_norm(x, 5, layer.weight, layer.bias, backend="numpy"))


@pytest.mark.parametrize("make", [
    lambda: nn.BatchNorm(3), lambda: nn.InstanceNorm(3), lambda: nn.LayerNorm(3),
    lambda: nn.GroupNorm(1, 3), lambda: nn.RMSNorm(3)])
def test_backward_before_forward(make):
    layer = make()
    with pytest.raises(RuntimeError, match=r"backward\(\) was called before forward\(\)"):
        layer.backward(np.ones((2, 3, 4)))


def test_repr():
    assert repr(nn.BatchNorm(64)) == \
        "BatchNorm(64, eps=1e-05, momentum=0.1, affine=True, bias=True, track_running_stats=True)"
    assert repr(nn.BatchNorm(3, momentum=None, affine=False, track_running_stats=False)) == \
        ("BatchNorm(3, eps=1e-05, momentum=None, affine=False, bias=False, "
         "track_running_stats=False)")
    assert repr(nn.BatchNorm(3, bias=False)) == \
        "BatchNorm(3, eps=1e-05, momentum=0.1, affine=True, bias=False, track_running_stats=True)"
    assert repr(nn.InstanceNorm(8)) == \
        ("InstanceNorm(8, eps=1e-05, momentum=0.1, affine=False, bias=False, "
         "track_running_stats=False)")
    assert repr(nn.LayerNorm(10)) == \
        "LayerNorm((10,), eps=1e-05, elementwise_affine=True, bias=True)"
    assert repr(nn.LayerNorm([3, 4], eps=1e-6, bias=False)) == \
        "LayerNorm((3, 4), eps=1e-06, elementwise_affine=True, bias=False)"
    assert repr(nn.GroupNorm(4, 16)) == "GroupNorm(4, 16, eps=1e-05, affine=True, bias=True)"
    assert repr(nn.GroupNorm(4, 16, bias=False)) == \
        "GroupNorm(4, 16, eps=1e-05, affine=True, bias=False)"
    assert repr(nn.RMSNorm(10)) == "RMSNorm((10,), eps=None, elementwise_affine=True)"
    assert repr(nn.RMSNorm((3, 4), eps=1e-6, elementwise_affine=False)) == \
        "RMSNorm((3, 4), eps=1e-06, elementwise_affine=False)"


@pytest.mark.parametrize("make, exc, match", [
    (lambda: nn.BatchNorm(0), ValueError, "num_features"),
    (lambda: nn.BatchNorm(3.0), TypeError, "num_features"),
    (lambda: nn.BatchNorm(True), TypeError, "num_features"),
    (lambda: nn.BatchNorm(3, eps=-1), ValueError, "eps"),
    (lambda: nn.BatchNorm(3, eps="1e-5"), TypeError, "eps"),
    (lambda: nn.BatchNorm(3, momentum=1.5), ValueError, "momentum"),
    (lambda: nn.BatchNorm(3, momentum="0.1"), TypeError, "momentum"),
    (lambda: nn.BatchNorm(3, affine=1), TypeError, "affine"),
    (lambda: nn.BatchNorm(3, track_running_stats=None), TypeError, "track_running_stats"),
    (lambda: nn.BatchNorm(3, dtype=np.int32), TypeError, "dtype"),
    (lambda: nn.BatchNorm(3, dtype="bogus"), TypeError, "dtype"),
    (lambda: nn.BatchNorm(3, backend=1), TypeError, "backend"),
    (lambda: nn.BatchNorm(3, bias="no"), TypeError, "bias must be a bool"),
    (lambda: nn.InstanceNorm(3, affine=True, bias=None), TypeError, "bias must be a bool"),
    (lambda: nn.GroupNorm(1, 3, bias=1), TypeError, "bias must be a bool"),
    (lambda: nn.InstanceNorm(-1), ValueError, "num_features"),
    (lambda: nn.InstanceNorm(3, momentum=float("nan")), ValueError, "momentum"),
    (lambda: nn.LayerNorm(()), ValueError, "normalized_shape"),
    (lambda: nn.LayerNorm((3, 0)), ValueError, "normalized_shape"),
    (lambda: nn.LayerNorm("3"), TypeError, "normalized_shape"),
    (lambda: nn.LayerNorm(3.5), TypeError, "normalized_shape"),
    (lambda: nn.LayerNorm(3, bias="no"), TypeError, "bias"),
    (lambda: nn.LayerNorm(3, elementwise_affine=None), TypeError, "elementwise_affine"),
    (lambda: nn.LayerNorm(3, dtype=np.float16), TypeError, "dtype"),
    (lambda: nn.GroupNorm(3, 4), ValueError, "num_groups must divide num_channels"),
    (lambda: nn.GroupNorm(0, 4), ValueError, "num_groups"),
    (lambda: nn.GroupNorm(2, 0), ValueError, "num_channels"),
    (lambda: nn.GroupNorm(2, 4, eps=float("inf")), ValueError, "eps"),
    (lambda: nn.RMSNorm(3, eps=-0.1), ValueError, "eps"),
    (lambda: nn.RMSNorm(3, elementwise_affine=0), TypeError, "elementwise_affine"),
])
def test_bad_constructor_arguments(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("layer, shape, match", [
    (nn.BatchNorm(3), (4, 5), "num_features=3"),
    (nn.BatchNorm(3), (4,), "at least 2 dimensions"),
    (nn.InstanceNorm(3), (4, 2, 5), "num_features=3"),
    (nn.InstanceNorm(3), (4, 5), "unbatched input must have num_features=3 channels"),
    (nn.InstanceNorm(3), (3,), "at least 2 dimensions"),
    (nn.InstanceNorm1d(3), (2, 3, 4, 5), r"InstanceNorm1d expects 2-D \(unbatched\) or 3-D"),
    (nn.InstanceNorm2d(3), (3, 4), r"InstanceNorm2d expects 3-D \(unbatched\) or 4-D"),
    (nn.InstanceNorm3d(3), (2, 3, 4, 5, 6, 7), "InstanceNorm3d expects 4-D"),
    (nn.GroupNorm(2, 4), (4, 6, 5), "num_channels=4"),
    (nn.LayerNorm((3, 4)), (2, 4, 3), "normalized_shape"),
    (nn.RMSNorm(4), (2, 5), "normalized_shape"),
])
def test_bad_input_shape(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer(np.ones(shape, np.float32))


@pytest.mark.parametrize("make", [
    lambda b: nn.BatchNorm(3, backend=b), lambda b: nn.InstanceNorm(3, backend=b),
    lambda b: nn.InstanceNorm2d(3, backend=b), lambda b: nn.LayerNorm(3, backend=b),
    lambda b: nn.GroupNorm(1, 3, backend=b), lambda b: nn.RMSNorm(3, backend=b)])
def test_unknown_backend_is_reported_when_configured(make):
    """At construction and on assignment, not at the first forward."""
    with pytest.raises(ValueError, match="unknown backend 'no-such-backend'; known backends: "
                                         ".*numpy"):
        make("no-such-backend")
    layer = make("numpy")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        layer.backend = "nope"
    with pytest.raises(TypeError, match="backend must be a backend name"):
        layer.backend = 3
    assert layer.backend == "numpy"          # a rejected value leaves the old one
    layer.backend = None
    assert layer.backend is None


def test_backend_registered_later_is_accepted_once_registered():
    from fastdl import registry
    from fastdl._backends import numpy as ref

    class Spy:
        name = "spy-later"
        ops = {"layer_norm_fwd": ref.norm.layer_norm_fwd}

    with pytest.raises(ValueError, match="unknown backend 'spy-later'"):
        nn.LayerNorm(3, backend="spy-later")
    registry.register_backend(Spy())
    try:
        layer = nn.LayerNorm(3, backend="spy-later")
        assert layer(np.ones((2, 3), np.float32)).shape == (2, 3)
    finally:
        registry.unregister_backend("spy-later")


# ---------------------------------------------------------------- training

def test_gradient_descent_fits_layer_norm_affine():
    g = rng(15)
    x = (g.standard_normal((128, 16)) * 3 + 1).astype(np.float32)
    a, c = g.standard_normal(16), g.standard_normal(16)
    target = ((x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5) * a
              + c).astype(np.float32)
    layer = nn.LayerNorm(16, backend="numpy")
    losses = []
    for _ in range(40):
        y = layer(x)
        losses.append(float(((y - target) ** 2).sum(axis=1).mean()))
        layer.backward(2 * (y - target) / len(x))
        for name, p in layer.params.items():
            p -= 0.25 * layer.grads[name]
    assert losses[-1] < losses[0] / 100
    assert all(b < a for a, b in zip(losses[:10], losses[1:11]))  # before float32's floor
    close(layer.weight, a, 1e-3)
    close(layer.bias, c, 1e-3)
