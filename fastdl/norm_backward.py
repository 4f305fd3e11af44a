"""Backward of the normalization layers: ``(dx, dweight, dbias)`` of each forward.

Each backward validates its arguments as its forward does, takes the saved
statistics (``stats=`` from ``return_stats=True``) or recomputes them with the
forward, and calls one backward op (``print(fastdl.ops.table("norm"))``).
Import the functions from ``fastdl`` or ``fastdl.norm``.
"""
from __future__ import annotations

import numpy as np

from fastdl import ops as _ops
from fastdl._validate import as_float_array, check_flag
# fastdl.norm imports this module only after it has defined everything named here
from fastdl.norm import (_channel_args, _check_groups, _eps, _flat, _layer_args, _momentum, _ncs,
                         _rms_eps, _rows, _running, _running_stats, _spatial_check,
                         _training_count, batch_norm, group_norm, instance_norm, layer_norm,
                         rms_norm)

__all__ = ["batch_norm_backward", "layer_norm_backward", "instance_norm_backward",
           "group_norm_backward", "rms_norm_backward"]


# ---------------------------------------------------------------- shared checks

def _grad(dy, x: np.ndarray) -> np.ndarray:
    dy = as_float_array(dy, "grad_output", keep_half=True)
    if dy.shape != x.shape:
        raise ValueError(f"grad_output must have the input's shape {x.shape}, got {dy.shape}")
    return np.ascontiguousarray(dy, dtype=x.dtype)


def _saved(stats, shape: tuple, with_mean: bool):
    """Validate ``stats=`` of a backward: a NormStats / (mean, rstd) pair of ``shape``."""
    if not isinstance(stats, tuple) or len(stats) != 2:
        raise TypeError("stats must be the NormStats (mean, rstd) a forward returned with "
                        f"return_stats=True, got {type(stats).__name__}")
    arrays = []
    for value, name in zip(stats, ("stats.mean", "stats.rstd")):
        if value is None and name == "stats.mean" and not with_mean:
            arrays.append(None)
            continue
        arr = as_float_array(value, name)
        if arr.shape != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
        arrays.append(np.ascontiguousarray(arr, dtype=np.float64))
    return arrays


def _zero_grads(x: np.ndarray, w, b):
    """(dx, dweight, dbias) of an empty input."""
    return (np.zeros_like(x), None if w is None else np.zeros_like(w),
            None if b is None else np.zeros_like(b))


def _typed_grads(grads, x: np.ndarray, weight, bias):
    """(dx, dweight, dbias) with the parameter gradients in torch's dtypes: for
    float16 input, a float32 weight/bias gets a float32 gradient and any other a
    float16 one; otherwise the input's dtype."""
    dx, dw, db = grads

    def cast(g, param):
        if g is None:
            return None
        keep32 = x.dtype == np.float16 and getattr(param, "dtype", None) == np.float32
        return g.astype(np.float32 if keep32 else x.dtype, copy=False)
    return dx, cast(dw, weight), cast(db, bias)


def layer_norm_backward(grad_output, input, normalized_shape, weight=None, bias=None, eps=1e-5,
                        *, stats=None, backend=None):
    """Gradients of ``layer_norm``: ``(dx, dweight, dbias)`` (None where the forward
    had no weight / bias).  ``stats`` (from ``return_stats=True``) skips
    recomputing the statistics."""
    x, shape, size, rows, lead, w, b = _layer_args(input, normalized_shape, weight, bias)
    eps = _eps(eps)
    dy = _grad(grad_output, x)
    if stats is None:
        _, stats = layer_norm(x, shape, w, b, eps, return_stats=True, backend=backend)
    mean, rstd = _saved(stats, lead, True)
    if x.size == 0:
        return _typed_grads(_zero_grads(x, w, b), x, weight, bias)
    dx, dw, db = _ops.layer_norm_bwd(dy.reshape(rows, size), _rows(x, rows, size), mean.reshape(-1),
                           rstd.reshape(-1), _flat(w), w is not None, b is not None, backend=backend)
    return _typed_grads((dx.reshape(x.shape), None if dw is None else dw.reshape(shape),
                         None if db is None else db.reshape(shape)), x, weight, bias)


def rms_norm_backward(grad_output, input, normalized_shape, weight=None, eps=None, *,
                      stats=None, backend=None):
    """Gradients of ``rms_norm``: ``(dx, dweight, None)``."""
    x, shape, size, rows, lead, w, _ = _layer_args(input, normalized_shape, weight, None)
    eps = _rms_eps(eps, x.dtype)
    dy = _grad(grad_output, x)
    if stats is None:
        _, stats = rms_norm(x, shape, w, eps, return_stats=True, backend=backend)
    _, rstd = _saved(stats, lead, False)
    if x.size == 0:
        return _typed_grads(_zero_grads(x, w, None), x, weight, None)
    dx, dw = _ops.rms_norm_bwd(dy.reshape(rows, size), _rows(x, rows, size),
                                                rstd.reshape(-1), _flat(w), w is not None,
                                backend=backend)
    return _typed_grads((dx.reshape(x.shape), None if dw is None else dw.reshape(shape), None),
                        x, weight, None)


def group_norm_backward(grad_output, input, num_groups, weight=None, bias=None, eps=1e-5, *,
                        stats=None, backend=None):
    """Gradients of ``group_norm``: ``(dx, dweight, dbias)``."""
    x, C, w, b = _channel_args(input, weight, bias)
    G = _check_groups(num_groups, C)
    eps = _eps(eps)
    dy = _grad(grad_output, x)
    if stats is None:
        _, stats = group_norm(x, G, w, b, eps, return_stats=True, backend=backend)
    mean, rstd = _saved(stats, (x.shape[0], G), True)
    return _typed_grads(_group_bwd(dy, x, mean, rstd, G, w, b, backend), x, weight, bias)


def _group_bwd(dy, x, mean, rstd, G, w, b, backend):
    if x.size == 0:
        return _zero_grads(x, w, b)
    dx, dw, db = _ops.group_norm_bwd(_ncs(dy), _ncs(x), mean, rstd, G, w,
                                                      w is not None, b is not None, backend=backend)
    return dx.reshape(x.shape), dw, db


def instance_norm_backward(grad_output, input, running_mean=None, running_var=None, weight=None,
                           bias=None, use_input_stats=True, momentum=0.1, eps=1e-5, *,
                           stats=None, backend=None):
    """Gradients of ``instance_norm``: ``(dx, dweight, dbias)``.  Running buffers
    are not touched."""
    x, C, w, b = _channel_args(input, weight, bias)
    use_input_stats = check_flag(use_input_stats, "use_input_stats")
    _momentum(momentum)
    eps = _eps(eps)
    rm, rv = _running(running_mean, running_var, C,
                      required=None if use_input_stats or stats is not None
                      else "when use_input_stats=False and stats is None", update=False)
    dy = _grad(grad_output, x)
    if not use_input_stats:
        if stats is None:
            stats = _running_stats(rm, rv, eps)
        mean, rstd = _saved(stats, (C,), True)
        return _typed_grads(_batch_bwd(dy, x, mean, rstd, w, b, False, backend), x, weight, bias)
    _spatial_check(x)
    if stats is None:
        _, stats = instance_norm(x, None, None, w, b, True, 0.0, eps, return_stats=True,
                                 backend=backend)
    mean, rstd = _saved(stats, (x.shape[0], C), True)
    return _typed_grads(_group_bwd(dy, x, mean, rstd, C, w, b, backend), x, weight, bias)


def batch_norm_backward(grad_output, input, running_mean, running_var, weight=None, bias=None,
                        training=False, momentum=0.1, eps=1e-5, *, stats=None, backend=None):
    """Gradients of ``batch_norm``: ``(dx, dweight, dbias)``.  Running buffers are
    not touched (the forward updated them)."""
    x, C, w, b = _channel_args(input, weight, bias)
    training = check_flag(training, "training")
    _momentum(momentum)
    eps = _eps(eps)
    rm, rv = _running(running_mean, running_var, C,
                      required=None if training or stats is not None
                      else "when training=False and stats is None", update=False)
    dy = _grad(grad_output, x)
    if training:
        _training_count(x)       # the forward refused it; a given stats= must not slip it past
    if stats is None:
        if training:
            _, stats = batch_norm(x, None, None, w, b, True, 0.0, eps, return_stats=True,
                                  backend=backend)
        else:
            stats = _running_stats(rm, rv, eps)
    mean, rstd = _saved(stats, (C,), True)
    return _typed_grads(_batch_bwd(dy, x, mean, rstd, w, b, training, backend), x, weight, bias)


def _batch_bwd(dy, x, mean, rstd, w, b, training, backend):
    if x.size == 0:
        return _zero_grads(x, w, b)
    dx, dw, db = _ops.batch_norm_bwd(_ncs(dy), _ncs(x), mean, rstd, w,
                                                      training, w is not None, b is not None,
                                    backend=backend)
    return dx.reshape(x.shape), dw, db
