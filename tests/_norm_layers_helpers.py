"""Shared by the tests/test_norm_layers_*.py modules: one interface (fwd / bwd) to call every
normalization layer and mode, the operands they take and a bitwise comparison.
"""

import numpy as np

import fastdl
from fastdl.testing import rng_for


# A norm names a layer and its mode.  fwd()/bwd() call it with weight w, bias b (per-channel,
# or the normalized shape for layer/RMS norm) and, for the modes that use them, running
# statistics rm/rv.  Group norm uses 2 groups when C is even, else 1.
RUNNING = {"batch_train", "batch_eval", "instance", "instance_eval"}


def groups_of(C):
    return 2 if C % 2 == 0 else 1


def param_shape(norm, shape):
    return shape[-1:] if norm in ("layer", "rms") else (shape[1],)


def fwd(norm, x, w=None, b=None, rm=None, rv=None, *, backend, **kw):
    if norm in ("batch_train", "batch_eval"):
        return fastdl.batch_norm(x, rm, rv, w, b, norm == "batch_train", backend=backend, **kw)
    if norm in ("instance", "instance_eval"):
        return fastdl.instance_norm(x, rm, rv, w, b, norm == "instance", backend=backend, **kw)
    if norm == "group":
        return fastdl.group_norm(x, groups_of(x.shape[1]), w, b, backend=backend, **kw)
    if norm == "layer":
        return fastdl.layer_norm(x, x.shape[-1:], w, b, backend=backend, **kw)
    assert b is None
    return fastdl.rms_norm(x, x.shape[-1:], w, backend=backend, **kw)


def bwd(norm, dy, x, w=None, b=None, rm=None, rv=None, *, backend, **kw):
    if norm in ("batch_train", "batch_eval"):
        return fastdl.batch_norm_backward(dy, x, rm, rv, w, b, norm == "batch_train",
                                          backend=backend, **kw)
    if norm in ("instance", "instance_eval"):
        return fastdl.instance_norm_backward(dy, x, rm, rv, w, b, norm == "instance",
                                             backend=backend, **kw)
    if norm == "group":
        return fastdl.group_norm_backward(dy, x, groups_of(x.shape[1]), w, b, backend=backend,
                                          **kw)
    if norm == "layer":
        return fastdl.layer_norm_backward(dy, x, x.shape[-1:], w, b, backend=backend, **kw)
    assert b is None
    return fastdl.rms_norm_backward(dy, x, x.shape[-1:], w, backend=backend, **kw)


def operands(norm, shape, dtype=np.float64, *, affine=True, key=()):
    """x, dy, w, b, rm, rv for ``norm`` (None where the layer / mode takes none)."""
    rng = rng_for(norm, shape, np.dtype(dtype).name, affine, *key)
    x = (rng.standard_normal(shape) * 1.3 + 0.4).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    ps = param_shape(norm, shape)
    w = (rng.standard_normal(ps) * 0.5 + 1).astype(dtype) if affine else None
    b = rng.standard_normal(ps).astype(dtype) if affine and norm != "rms" else None
    rm = rv = None
    if norm in RUNNING:
        C = shape[1]
        rm = (rng.standard_normal(C) * 0.3).astype(dtype)
        rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    return x, dy, w, b, rm, rv


def assert_same(a, b, what=""):
    if b is None:
        assert a is None, what
    else:
        assert a.dtype == b.dtype, what
        np.testing.assert_array_equal(a, b, err_msg=what)


def make_array(shape, dtype, layout, rng, offset=0.0, scale=1.0):
    """``shape`` values of ``dtype`` stored C-contiguous, Fortran, with steps of 2, with
    axes 0 and 1 swapped in memory, or with negative strides."""
    if layout == "step":
        big = (2 * shape[0],) + tuple(shape[1:-1]) + (2 * shape[-1],)
        base = (rng.standard_normal(big) * scale + offset).astype(dtype)
        a = base[::2, ..., ::2]
    else:
        a = (rng.standard_normal(shape) * scale + offset).astype(dtype)
        if layout == "f":
            a = np.asfortranarray(a)
        elif layout == "transposed":
            a = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)
        elif layout == "reversed":
            a = np.ascontiguousarray(a[::-1, ..., ::-1])[::-1, ..., ::-1]
    assert a.shape == tuple(shape)
    return a
