"""fastdl.norm against PyTorch: forward, autograd backward, running statistics, saved stats.

Every layer is compared with ``torch.nn.functional`` on the same values in the
same dtype: the output, the running buffers updated in place, the statistics
returned with ``return_stats=True`` (against torch's own saved mean / rstd
where torch exposes them), and ``(dx, dweight, dbias)`` against autograd of the
same call with a random ``grad_output``.  The backward with ``stats=`` from the
forward must equal, bit for bit, the backward that recomputes them.
"""

import numpy as np
import pytest

import fastdl
from fastdl.testing import rng_for

torch = pytest.importorskip("torch")
F = torch.nn.functional

BACKENDS = ["numpy", "cython"]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]
TOL = {np.dtype(np.float32): (1e-4, 1e-5), np.dtype(np.float64): (1e-10, 1e-12)}
# 0, 1, 2 and 3 spatial dims, odd sizes, one long spatial extent
SHAPES = [(4, 6), (3, 6, 7), (2, 6, 33), (2, 4, 5, 7), (2, 6, 3, 4, 5), (3, 6, 1000)]
SPATIAL_SHAPES = [s for s in SHAPES if len(s) > 2]
AFFINE = [pytest.param("none", id="plain"), pytest.param("wb", id="affine")]


# ---------------------------------------------------------------- helpers

def make(shape, dtype, param_shape, affine, *key):
    """x (mean 0.7, std 1.5), grad_output, weight and bias (None unless asked for)."""
    rng = rng_for(shape, np.dtype(dtype).name, affine, *key)
    x = (rng.standard_normal(shape) * 1.5 + 0.7).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(param_shape) * 0.5 + 1).astype(dtype) if "w" in affine else None
    b = rng.standard_normal(param_shape).astype(dtype) if "b" in affine else None
    return x, dy, w, b


def running(C, dtype, *key):
    rng = rng_for(C, np.dtype(dtype).name, "running", *key)
    return ((rng.standard_normal(C) * 0.5).astype(dtype), rng.uniform(0.5, 2.0, C).astype(dtype))


def tt(a, grad=False):
    """A torch tensor holding a copy of ``a`` (None stays None)."""
    if a is None:
        return None
    return torch.from_numpy(np.array(a, copy=True)).requires_grad_(grad)


def close(got, want, dtype, what):
    """allclose with the dtype's tolerances; atol scales with the reference's magnitude."""
    rtol, atol = TOL[np.dtype(dtype)]
    if isinstance(want, torch.Tensor):
        want = want.detach().numpy()
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != torch's {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale, err_msg=what)


def check_forward(y, ty, x):
    assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == x.dtype
    close(y, ty, x.dtype, "forward output")


def check_grads(grads, dy, ty, tx, tw, tb, dtype):
    """Compare fastdl's (dx, dw, db) with autograd of ``ty`` for grad_output ``dy``."""
    ty.backward(torch.from_numpy(dy.copy()))
    dx, dw, db = grads
    assert dx.dtype == dtype and dx.shape == tuple(tx.shape)
    close(dx, tx.grad, dtype, "dx")
    for got, leaf, name in ((dw, tw, "dweight"), (db, tb, "dbias")):
        if leaf is None:
            assert got is None, f"{name} must be None without that parameter"
        else:
            assert got.dtype == dtype and got.shape == tuple(leaf.shape), name
            close(got, leaf.grad, dtype, name)


def same_bits(a, b):
    """Backward with stats= must be the backward that recomputes them, bit for bit."""
    for got, want, name in zip(a, b, ("dx", "dweight", "dbias")):
        if want is None:
            assert got is None, name
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name} with stats= differs")


def check_stats(stats, mean, rstd, dtype, with_mean=True):
    """NormStats are float64 arrays of the documented shape, equal to torch's / the reference."""
    assert isinstance(stats, fastdl.NormStats)
    if with_mean:
        assert stats.mean.dtype == np.float64
        close(stats.mean, mean, dtype, "stats.mean")
    else:
        assert stats.mean is None
    assert stats.rstd.dtype == np.float64
    close(stats.rstd, rstd, dtype, "stats.rstd")


# ---------------------------------------------------------------- batch norm

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("training", [pytest.param(True, id="train"),
                                      pytest.param(False, id="eval")])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm(shape, training, affine, dtype, backend):
    C = shape[1]
    momentum, eps = 0.3, 1e-4
    x, dy, w, b = make(shape, dtype, (C,), affine, "batch")
    rm, rv = running(C, dtype)
    trm, trv = tt(rm), tt(rv)
    rm0, rv0 = rm.copy(), rv.copy()

    y, stats = fastdl.batch_norm(x, rm, rv, w, b, training, momentum, eps, return_stats=True,
                                 backend=backend)
    tx, tw, tb = tt(x, True), tt(w, True), tt(b, True)
    ty = F.batch_norm(tx, trm, trv, tw, tb, training, momentum, eps)
    check_forward(y, ty, x)
    # running buffers: updated in place like torch's when training, untouched in eval
    close(rm, trm, dtype, "running_mean")
    close(rv, trv, dtype, "running_var")
    if not training:
        np.testing.assert_array_equal(rm, rm0)
        np.testing.assert_array_equal(rv, rv0)

    if training:
        _, smean, srstd = torch.native_batch_norm(tt(x), tt(w), tt(b), None, None, True,
                                                  momentum, eps)
        check_stats(stats, smean, srstd, dtype)
    else:
        check_stats(stats, rm0.astype(np.float64),
                    1 / np.sqrt(rv0.astype(np.float64) + eps), dtype)

    grads = fastdl.batch_norm_backward(dy, x, rm0, rv0, w, b, training, momentum, eps,
                                       backend=backend)
    check_grads(grads, dy, ty, tx, tw, tb, dtype)
    with_stats = fastdl.batch_norm_backward(dy, x, rm0, rv0, w, b, training, momentum, eps,
                                            stats=stats, backend=backend)
    same_bits(with_stats, grads)


# ---------------------------------------------------------------- layer norm

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("ndims", [pytest.param(1, id="last1"), pytest.param(2, id="last2")])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm(shape, ndims, affine, dtype, backend):
    ns = shape[-ndims:]
    lead = shape[:-ndims]
    x, dy, w, b = make(shape, dtype, ns, affine, "layer")

    y, stats = fastdl.layer_norm(x, ns, w, b, return_stats=True, backend=backend)
    tx, tw, tb = tt(x, True), tt(w, True), tt(b, True)
    ty = F.layer_norm(tx, ns, tw, tb)          # default eps 1e-5 on both sides
    check_forward(y, ty, x)

    _, smean, srstd = torch.native_layer_norm(tt(x), list(ns), tt(w), tt(b), 1e-5)
    assert stats.mean.shape == stats.rstd.shape == lead
    check_stats(stats, smean.reshape(lead), srstd.reshape(lead), dtype)

    grads = fastdl.layer_norm_backward(dy, x, ns, w, b, backend=backend)
    check_grads(grads, dy, ty, tx, tw, tb, dtype)
    same_bits(fastdl.layer_norm_backward(dy, x, ns, w, b, stats=stats, backend=backend), grads)


# ---------------------------------------------------------------- instance norm

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("use_input_stats", [pytest.param(True, id="input_stats"),
                                             pytest.param(False, id="running_stats")])
@pytest.mark.parametrize("shape", SPATIAL_SHAPES, ids=str)
def test_instance_norm(shape, use_input_stats, affine, dtype, backend):
    N, C = shape[:2]
    S = int(np.prod(shape[2:]))
    momentum = 0.25
    x, dy, w, b = make(shape, dtype, (C,), affine, "instance")
    rm, rv = running(C, dtype, "instance")
    trm, trv = tt(rm), tt(rv)
    rm0, rv0 = rm.copy(), rv.copy()

    y, stats = fastdl.instance_norm(x, rm, rv, w, b, use_input_stats, momentum,
                                    return_stats=True, backend=backend)
    tx, tw, tb = tt(x, True), tt(w, True), tt(b, True)
    ty = F.instance_norm(tx, trm, trv, tw, tb, use_input_stats, momentum)
    check_forward(y, ty, x)
    close(rm, trm, dtype, "running_mean")
    close(rv, trv, dtype, "running_var")
    if not use_input_stats:
        np.testing.assert_array_equal(rm, rm0)
        np.testing.assert_array_equal(rv, rv0)

    if use_input_stats:   # instance statistics are group statistics with one channel a group
        _, smean, srstd = torch.native_group_norm(tt(x), None, None, N, C, S, C, 1e-5)
        assert stats.mean.shape == stats.rstd.shape == (N, C)
        check_stats(stats, smean, srstd, dtype)
    else:
        check_stats(stats, rm0.astype(np.float64),
                    1 / np.sqrt(rv0.astype(np.float64) + 1e-5), dtype)

    grads = fastdl.instance_norm_backward(dy, x, rm0, rv0, w, b, use_input_stats, momentum,
                                          backend=backend)
    check_grads(grads, dy, ty, tx, tw, tb, dtype)
    same_bits(fastdl.instance_norm_backward(dy, x, rm0, rv0, w, b, use_input_stats, momentum,
                                            stats=stats, backend=backend), grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_instance_norm_without_running_stats(dtype, backend):
    shape = (3, 4, 5, 3)
    x, dy, w, b = make(shape, dtype, (4,), "wb", "instance-plain")
    y = fastdl.instance_norm(x, None, None, w, b, backend=backend)
    tx, tw, tb = tt(x, True), tt(w, True), tt(b, True)
    ty = F.instance_norm(tx, None, None, tw, tb)
    check_forward(y, ty, x)
    check_grads(fastdl.instance_norm_backward(dy, x, None, None, w, b, backend=backend),
                dy, ty, tx, tw, tb, dtype)


# ---------------------------------------------------------------- group norm

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("groups", ["1", "2", "C"], ids=lambda g: f"G{g}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_group_norm(shape, groups, affine, dtype, backend):
    N, C = shape[:2]
    S = int(np.prod(shape[2:]))
    G = C if groups == "C" else int(groups)
    eps = 1e-3
    x, dy, w, b = make(shape, dtype, (C,), affine, "group")

    y, stats = fastdl.group_norm(x, G, w, b, eps, return_stats=True, backend=backend)
    tx, tw, tb = tt(x, True), tt(w, True), tt(b, True)
    ty = F.group_norm(tx, G, tw, tb, eps)
    check_forward(y, ty, x)

    _, smean, srstd = torch.native_group_norm(tt(x), tt(w), tt(b), N, C, S, G, eps)
    assert stats.mean.shape == stats.rstd.shape == (N, G)
    check_stats(stats, smean, srstd, dtype)

    grads = fastdl.group_norm_backward(dy, x, G, w, b, eps, backend=backend)
    check_grads(grads, dy, ty, tx, tw, tb, dtype)
    same_bits(fastdl.group_norm_backward(dy, x, G, w, b, eps, stats=stats, backend=backend),
              grads)


# ---------------------------------------------------------------- RMS norm

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [pytest.param("none", id="plain"),
                                    pytest.param("w", id="weight")])
@pytest.mark.parametrize("ndims,eps", [pytest.param(1, None, id="last1-eps_default"),
                                       pytest.param(1, 1e-3, id="last1-eps1e-3"),
                                       pytest.param(2, None, id="last2-eps_default")])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_norm(shape, ndims, eps, affine, dtype, backend):
    ns = shape[-ndims:]
    lead = shape[:-ndims]
    x, dy, w, _ = make(shape, dtype, ns, affine, "rms")

    if eps is None:   # the default is eps=None: the dtype's machine epsilon, as torch
        y, stats = fastdl.rms_norm(x, ns, w, return_stats=True, backend=backend)
        grads = fastdl.rms_norm_backward(dy, x, ns, w, backend=backend)
    else:
        y, stats = fastdl.rms_norm(x, ns, w, eps, return_stats=True, backend=backend)
        grads = fastdl.rms_norm_backward(dy, x, ns, w, eps, backend=backend)
    tx, tw = tt(x, True), tt(w, True)
    ty = F.rms_norm(tx, ns, tw, eps)
    check_forward(y, ty, x)

    e = float(np.finfo(dtype).eps) if eps is None else eps
    xd = x.astype(np.float64).reshape(lead + (-1,))
    assert stats.rstd.shape == lead
    check_stats(stats, None, 1 / np.sqrt((xd * xd).mean(axis=-1) + e), dtype, with_mean=False)

    check_grads(grads, dy, ty, tx, tw, None, dtype)
    same_bits(fastdl.rms_norm_backward(dy, x, ns, w, e, stats=stats, backend=backend), grads)


# ---------------------------------------------------------------- weight only / bias only

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", [pytest.param("w", id="weight_only"),
                                    pytest.param("b", id="bias_only")])
@pytest.mark.parametrize("layer", ["batch", "layer", "instance", "group"])
def test_weight_only_or_bias_only(layer, affine, dtype, backend):
    shape = (3, 4, 9)
    C = shape[1]
    param_shape = shape[-2:] if layer == "layer" else (C,)
    x, dy, w, b = make(shape, dtype, param_shape, affine, "partial", layer)
    tx, tw, tb = tt(x, True), tt(w, True), tt(b, True)
    if layer == "batch":
        y = fastdl.batch_norm(x, None, None, w, b, True, backend=backend)
        ty = F.batch_norm(tx, None, None, tw, tb, True)
        grads = fastdl.batch_norm_backward(dy, x, None, None, w, b, True, backend=backend)
    elif layer == "layer":
        y = fastdl.layer_norm(x, param_shape, w, b, backend=backend)
        ty = F.layer_norm(tx, param_shape, tw, tb)
        grads = fastdl.layer_norm_backward(dy, x, param_shape, w, b, backend=backend)
    elif layer == "instance":
        y = fastdl.instance_norm(x, None, None, w, b, backend=backend)
        ty = F.instance_norm(tx, None, None, tw, tb)
        grads = fastdl.instance_norm_backward(dy, x, None, None, w, b, backend=backend)
    else:
        y = fastdl.group_norm(x, 2, w, b, backend=backend)
        # torch 2.x's CPU group_norm backward fails ("tensor does not have a device") with a
        # bias and no weight: give torch a constant weight of ones, which is the same layer
        ty = F.group_norm(tx, 2, torch.ones(C, dtype=tx.dtype) if tw is None else tw, tb)
        grads = fastdl.group_norm_backward(dy, x, 2, w, b, backend=backend)
    check_forward(y, ty, x)
    check_grads(grads, dy, ty, tx, tw, tb, dtype)


# ---------------------------------------------------------------- shared rules

@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_momentum_and_unbiased_variance_like_torch(backend):
    """Several training steps with float32 buffers, default momentum and eps."""
    x = rng_for("steps").standard_normal((5, 3, 4)).astype(np.float32)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    trm, trv = tt(rm), tt(rv)
    for step in range(4):
        xs = x * (step + 1) + step
        fastdl.batch_norm(xs, rm, rv, training=True, backend=backend)
        F.batch_norm(tt(xs), trm, trv, training=True)
    close(rm, trm, np.float32, "running_mean")
    close(rv, trv, np.float32, "running_var")
    # and evaluation with the learned buffers
    y = fastdl.batch_norm(x, rm, rv, backend=backend)
    check_forward(y, F.batch_norm(tt(x), trm, trv), x)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1)], ids=str)
def test_one_value_per_channel_is_an_error_in_both(shape):
    x = np.ones(shape)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(tt(x), None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastdl.batch_norm(x, None, None, training=True)
