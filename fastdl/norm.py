"""Normalization API: statistics, forward layers and their backward.

The public functions validate, reshape to a canonical contiguous view and
call one op; the ops' arguments, results and the rules every backend shares
are declared in ``fastdl.ops.norm`` (``print(fastdl.ops.table("norm"))``).
The backward functions are defined in ``fastdl.norm_backward`` and re-exported here.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from fastdl import ops as _ops
from fastdl._validate import (as_float_array, check_choice, check_flag, check_int, check_out,
                              check_param, check_real, compute_dtype, overlaps, plain_array,
                              reject_masked)

__all__ = [
    "norm_stats", "NORM_KINDS", "NormStats",
    "batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm",
    "batch_norm_backward", "layer_norm_backward", "instance_norm_backward",
    "group_norm_backward", "rms_norm_backward",
]

NORM_KINDS = _ops.NORM_KINDS
NORM_OPS = tuple(op.name for op in _ops.NORM_OPS)     # the op names (backends implement them)


class NormStats(NamedTuple):
    """What a forward saves for its backward, as float64 arrays.

    ``mean`` (None for ``rms_norm``) and ``rstd = 1 / sqrt(var + eps)`` per
    statistic group: shape ``input.shape[:-len(normalized_shape)]`` for
    layer/RMS norm, ``(N, num_groups)`` for group norm, ``(N, C)`` for instance
    norm with input statistics and ``(C,)`` for batch norm (and instance norm
    with running statistics).
    """

    mean: np.ndarray | None
    rstd: np.ndarray


# ---------------------------------------------------------------- statistics

def _group_count(shape, kind: str, num_groups) -> int:
    n, c, spatial = shape[0], shape[1], math.prod(shape[2:])
    return {"batch": n * spatial, "layer": c * spatial, "instance": spatial,
            "group": (c // num_groups if num_groups else 0) * spatial}[kind]


def norm_stats(x, kind: str, *, num_groups: int | None = None, ddof: int = 0,
               backend: str | None = None):
    """Mean and variance of ``x`` (N, C, *spatial) as each normalization uses them.

    ``kind="batch"`` -> shapes (C,), over N and the spatial dims;
    ``"layer"`` -> (N,), over C and spatial; ``"instance"`` -> (N, C), over
    spatial; ``"group"`` -> (N, num_groups), over C/num_groups channels and
    spatial.  ``ddof`` is NumPy's delta degrees of freedom (0: biased, as the
    normalization layers use).  float16/float32/float64 keep their dtype (as
    ``torch.var_mean`` does; float16 is computed in float32 or wider and rounded
    once); integer and bool inputs are computed in float64.  Returns ``(mean, var)``.

    Groups that reduce over zero elements (an empty batch for ``"batch"``,
    empty spatial dims) get NaN mean and variance, as NumPy's and torch's
    ``mean``/``var`` of an empty slice do.
    """
    x = as_float_array(x, "x", keep_half=True)
    check_choice(kind, "kind", NORM_KINDS)
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, *spatial), got shape {x.shape}")
    ddof = check_int(ddof, "ddof", minimum=0)
    if kind == "group":
        if num_groups is None:
            raise ValueError("num_groups is required for kind='group'")
        num_groups = _check_groups(num_groups, x.shape[1])
    elif num_groups is not None:
        raise ValueError(f"num_groups is only used with kind='group', got num_groups={num_groups!r} "
                         f"with kind={kind!r}")
    count = _group_count(x.shape, kind, num_groups)
    if count == 0 or x.size == 0:
        # nothing to reduce (an empty batch, no spatial elements) or no groups at all: NaN
        # statistics of the result's shape, as NumPy's and torch's mean/var of empty slices
        return _empty_result(x, kind, num_groups)
    if count - ddof <= 0:
        raise ValueError(f"ddof must be smaller than the number of elements per group ({count}), "
                         f"got ddof={ddof}")
    return _ops.norm_stats(x, kind, num_groups, ddof, backend=backend)


def _empty_result(x: np.ndarray, kind: str, num_groups):
    n, c = x.shape[0], x.shape[1]
    shape = {"batch": (c,), "layer": (n,), "instance": (n, c), "group": (n, num_groups)}[kind]
    return np.full(shape, np.nan, x.dtype), np.full(shape, np.nan, x.dtype)


# ---------------------------------------------------------------- shared checks

def _input(x, min_ndim: int = 2) -> np.ndarray:
    x = as_float_array(x, "input", keep_half=True)
    if x.ndim < min_ndim:
        raise ValueError(f"input must have at least {min_ndim} dimensions (N, C, *spatial), "
                         f"got shape {x.shape}")
    return x


def _ncs_shape(x: np.ndarray) -> tuple[int, int, int]:
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _ncs(x: np.ndarray) -> np.ndarray:
    """(N, C, S) C-contiguous view (or packed copy) of an (N, C, *spatial) array."""
    return np.ascontiguousarray(x).reshape(_ncs_shape(x))


def _check_groups(num_groups, C: int) -> int:
    num_groups = check_int(num_groups, "num_groups", minimum=1)
    if C % num_groups:
        raise ValueError(f"num_groups must divide the number of channels C={C}, "
                         f"got num_groups={num_groups}")
    return num_groups


def _normalized_shape(value, x: np.ndarray) -> tuple[tuple[int, ...], int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        shape = (int(value),)
    else:
        try:
            shape = tuple(value)
        except TypeError:
            raise TypeError("normalized_shape must be an int or a sequence of ints, got "
                            f"{value!r} ({type(value).__name__})") from None
        shape = tuple(check_int(s, "normalized_shape entries", minimum=0) for s in shape)
    if not shape:
        raise ValueError("normalized_shape must have at least one dimension, got ()")
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ValueError(f"normalized_shape must match the trailing dimensions of input: "
                         f"got normalized_shape={shape} for input of shape {x.shape}")
    # a normalized_shape with zero elements is an empty output, as in torch
    return shape, math.prod(shape)


def _eps(eps) -> float:
    return check_real(eps, "eps", low=0.0)


def _momentum(momentum) -> float:
    return check_real(momentum, "momentum", low=0.0, high=1.0)


def _running(rm, rv, C: int, *, required: str | None, update: bool):
    """Validate running_mean/running_var: both or neither; shape (C,); to update
    in place they must be writeable float ndarrays."""
    if (rm is None) != (rv is None):
        raise ValueError("running_mean and running_var must be given together, got "
                         f"running_mean={'None' if rm is None else 'an array'} and "
                         f"running_var={'None' if rv is None else 'an array'}")
    if rm is None:
        if required:
            raise ValueError(f"running_mean and running_var are required {required}, got None")
        return None, None
    out = []
    for value, name in ((rm, "running_mean"), (rv, "running_var")):
        if update:
            reject_masked(value, name)
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise TypeError(f"{name} must be a float numpy.ndarray (it is updated in place), "
                                f"got {type(value).__name__} {getattr(value, 'dtype', '')}")
            if not value.flags.writeable:
                raise ValueError(f"{name} must be writeable (it is updated in place)")
            value = plain_array(value, name)    # a subclass: updated through a plain view
        else:
            value = as_float_array(value, name)
        if value.shape != (C,):
            raise ValueError(f"{name} must have shape ({C},), got {value.shape}")
        out.append(value)
    if update and overlaps(out[0], out[1]):
        raise ValueError("running_mean and running_var must not share memory "
                         "(both are updated in place)")
    return out[0], out[1]


def _check_buffers(rm, rv, x, w, b) -> None:
    """Running buffers updated in place must not share memory with the operands."""
    if rm is None:
        return
    for arr, name in ((x, "input"), (w, "weight"), (b, "bias")):
        if arr is not None and (overlaps(rm, arr) or overlaps(rv, arr)):
            raise ValueError(f"running_mean and running_var must not share memory with the "
                             f"{name} (they are updated in place)")


def _update(buf: np.ndarray, new: np.ndarray, momentum: float) -> None:
    buf[...] = (1.0 - momentum) * buf.astype(np.float64) + momentum * new


def _out_buffer(out, x: np.ndarray, *others):
    """(array the op writes or None to let the backend allocate, the user's
    non-contiguous out to copy the result into or None).  ``out`` must not
    overlap the input nor ``others`` (parameters, running buffers)."""
    out = check_out(out, "out", x.shape, x.dtype, (x,) + others)
    if out is not None and out.flags.c_contiguous:
        return out, None
    return None, out


def _view(buf, *shape):
    return None if buf is None else buf.reshape(shape)


def _deliver(y: np.ndarray, buf, target, shape) -> np.ndarray:
    """The result: the caller's out= itself (written directly, or filled from y)."""
    if buf is not None:
        return buf
    y = y.reshape(shape)
    if target is None:
        return y
    np.copyto(target, y)
    return target


def _empty_out(buf, x: np.ndarray) -> np.ndarray:
    return np.empty(x.shape, x.dtype) if buf is None else buf


def _rstd(var: np.ndarray, eps: float) -> np.ndarray:
    return 1.0 / np.sqrt(np.asarray(var, np.float64) + eps)


def _running_stats(rm, rv, eps: float) -> NormStats:
    """The running buffers as NormStats; the mean is a copy, never an alias of
    the buffer the next training step updates."""
    return NormStats(np.array(rm, np.float64), _rstd(rv, eps))


def _flat(a):
    return None if a is None else a.reshape(-1)


def _empty_stats(shape, with_mean=True) -> NormStats:
    nan = np.full(shape, np.nan)
    return NormStats(nan.copy() if with_mean else None, nan)


def _result(y, stats: NormStats, return_stats: bool):
    return (y, stats) if return_stats else y


# ---------------------------------------------------------------- layer and RMS norm

def _layer_args(input, normalized_shape, weight, bias):
    x = as_float_array(input, "input", keep_half=True)
    shape, size = _normalized_shape(normalized_shape, x)
    w = check_param(weight, "weight", shape, compute_dtype(x.dtype))
    b = check_param(bias, "bias", shape, compute_dtype(x.dtype))
    lead = x.shape[:x.ndim - len(shape)]
    rows = math.prod(lead)
    return x, shape, size, rows, lead, w, b


def _rows(x, rows, size):
    return np.ascontiguousarray(x).reshape(rows, size)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
               return_stats=False, backend=None):
    """``torch.nn.functional.layer_norm``: normalize over the trailing ``normalized_shape``.

    ``out=`` receives the result (same shape and dtype as ``input``, not
    overlapping it).  With ``return_stats=True`` returns ``(y, NormStats)``
    for ``layer_norm_backward(..., stats=)``.
    """
    x, shape, size, rows, lead, w, b = _layer_args(input, normalized_shape, weight, bias)
    eps = _eps(eps)
    buf, target = _out_buffer(out, x, w, b)
    if x.size == 0:
        return _result(_deliver(_empty_out(buf, x), buf, target, x.shape), _empty_stats(lead), return_stats)
    y, mean, var = _ops.layer_norm_fwd(_rows(x, rows, size), _flat(w), _flat(b),
                                                        eps, _view(buf, rows, size), backend=backend)
    if not return_stats:
        return _deliver(y, buf, target, x.shape)
    stats = NormStats(np.reshape(mean, lead), _rstd(var, eps).reshape(lead))
    return _deliver(y, buf, target, x.shape), stats


def _rms_eps(eps, dtype) -> float:
    # torch's default: the machine epsilon of the dtype it computes in
    return float(np.finfo(compute_dtype(dtype)).eps) if eps is None else _eps(eps)


def rms_norm(input, normalized_shape, weight=None, eps=None, *, out=None, return_stats=False,
             backend=None):
    """``torch.nn.functional.rms_norm``: ``x / sqrt(mean(x**2) + eps) * weight`` over the
    trailing ``normalized_shape``; ``eps=None`` is the machine epsilon of the dtype it is
    computed in (float32 for float16 input, as torch)."""
    x, shape, size, rows, lead, w, _ = _layer_args(input, normalized_shape, weight, None)
    eps = _rms_eps(eps, x.dtype)
    buf, target = _out_buffer(out, x, w)
    if x.size == 0:
        return _result(_deliver(_empty_out(buf, x), buf, target, x.shape), _empty_stats(lead, False), return_stats)
    y, ms = _ops.rms_norm_fwd(_rows(x, rows, size), _flat(w), eps,
                                               _view(buf, rows, size), backend=backend)
    if not return_stats:
        return _deliver(y, buf, target, x.shape)
    stats = NormStats(None, _rstd(ms, eps).reshape(lead))
    return _deliver(y, buf, target, x.shape), stats


# ---------------------------------------------------------------- group and instance norm

def _channel_args(input, weight, bias):
    x = _input(input)
    C = x.shape[1]
    pd = compute_dtype(x.dtype)
    return x, C, check_param(weight, "weight", (C,), pd), check_param(bias, "bias", (C,), pd)


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5, *, out=None,
               return_stats=False, backend=None):
    """``torch.nn.functional.group_norm`` on (N, C, *spatial): statistics over each
    group of C/num_groups channels and the spatial dims; per-channel affine."""
    x, C, w, b = _channel_args(input, weight, bias)
    G = _check_groups(num_groups, C)
    eps = _eps(eps)
    buf, target = _out_buffer(out, x, w, b)
    if x.size == 0:
        return _result(_deliver(_empty_out(buf, x), buf, target, x.shape), _empty_stats((x.shape[0], G)), return_stats)
    y, mean, var = _ops.group_norm_fwd(_ncs(x), G, w, b, eps,
                                                        _view(buf, *_ncs_shape(x)), backend=backend)
    if not return_stats:
        return _deliver(y, buf, target, x.shape)
    stats = NormStats(np.asarray(mean), _rstd(var, eps))
    return _deliver(y, buf, target, x.shape), stats


def _spatial_check(x: np.ndarray) -> None:
    if math.prod(x.shape[2:]) == 1:
        raise ValueError("instance_norm needs more than 1 spatial element per instance when it "
                         f"uses input statistics, got input of shape {x.shape}")


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, out=None,
                  return_stats=False, backend=None):
    """``torch.nn.functional.instance_norm`` on (N, C, *spatial).

    With ``use_input_stats`` each (n, c) is normalized by its own statistics and
    the running buffers, when given, are updated in place with the mean over
    the batch of those statistics (the variance unbiased), as PyTorch does;
    otherwise the running statistics normalize.
    """
    x, C, w, b = _channel_args(input, weight, bias)
    use_input_stats = check_flag(use_input_stats, "use_input_stats")
    momentum, eps = _momentum(momentum), _eps(eps)
    rm, rv = _running(running_mean, running_var, C,
                      required=None if use_input_stats else "when use_input_stats=False",
                      update=use_input_stats)
    if use_input_stats:
        _check_buffers(rm, rv, x, w, b)
    buf, target = _out_buffer(out, x, w, b, rm, rv)
    if not use_input_stats:
        return _apply_running(x, rm, rv, w, b, eps, buf, target, return_stats, backend)
    _spatial_check(x)
    N, S = x.shape[0], math.prod(x.shape[2:])
    if x.size == 0:
        return _result(_deliver(_empty_out(buf, x), buf, target, x.shape), _empty_stats((N, C)), return_stats)
    y, mean, var = _ops.group_norm_fwd(_ncs(x), C, w, b, eps,
                                                        _view(buf, *_ncs_shape(x)), backend=backend)
    if rm is not None:
        _update(rm, np.mean(mean, axis=0), momentum)
        _update(rv, np.mean(np.asarray(var) * (S / (S - 1)), axis=0), momentum)
    if not return_stats:
        return _deliver(y, buf, target, x.shape)
    stats = NormStats(np.asarray(mean), _rstd(var, eps))
    return _deliver(y, buf, target, x.shape), stats


def _apply_running(x, rm, rv, w, b, eps, buf, target, return_stats, backend):
    mean, rstd = _running_stats(rm, rv, eps)
    if x.size:
        y = _ops.batch_norm_eval(_ncs(x), np.ascontiguousarray(mean), rstd, w,
                                                  b, _view(buf, *_ncs_shape(x)), backend=backend)
    else:
        y = _empty_out(buf, x)
    return _result(_deliver(y, buf, target, x.shape), NormStats(mean, rstd), return_stats)


# ---------------------------------------------------------------- batch norm

def _training_count(x: np.ndarray) -> int:
    # exactly one value has a zero batch variance and nothing to learn from; zero values (an
    # empty batch) are an empty output, as in torch
    count = x.shape[0] * math.prod(x.shape[2:])
    if count == 1:
        raise ValueError("batch_norm needs more than 1 value per channel when training, "
                         f"got input of shape {x.shape}")
    return count


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, out=None, return_stats=False, backend=None):
    """``torch.nn.functional.batch_norm`` on (N, C, *spatial).

    Training: batch statistics per channel over N and the spatial dims; the
    running buffers (optional) are updated in place,
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased
    batch variance.  Evaluation: the running statistics (required) normalize.

    In training exactly one value per channel (N times the spatial size) is an
    error, as in torch; an empty batch gives an empty output, NaN statistics
    and leaves the running buffers untouched.
    """
    x, C, w, b = _channel_args(input, weight, bias)
    training = check_flag(training, "training")
    momentum, eps = _momentum(momentum), _eps(eps)
    rm, rv = _running(running_mean, running_var, C,
                      required=None if training else "when training=False", update=training)
    if training:
        _check_buffers(rm, rv, x, w, b)
    buf, target = _out_buffer(out, x, w, b, rm, rv)
    if not training:
        return _apply_running(x, rm, rv, w, b, eps, buf, target, return_stats, backend)
    count = _training_count(x)
    if x.size == 0:       # empty batch or no channels: the running buffers stay as they are
        return _result(_deliver(_empty_out(buf, x), buf, target, x.shape), _empty_stats((C,)),
                       return_stats)
    y, mean, var = _ops.batch_norm_fwd(_ncs(x), w, b, eps,
                                                        _view(buf, *_ncs_shape(x)), backend=backend)
    if rm is not None:
        _update(rm, mean, momentum)
        _update(rv, np.asarray(var) * (count / (count - 1)), momentum)
    if not return_stats:
        return _deliver(y, buf, target, x.shape)
    stats = NormStats(np.asarray(mean), _rstd(var, eps))
    return _deliver(y, buf, target, x.shape), stats


# The backward functions live in fastdl.norm_backward, which imports the helpers above; this
# import stays last so that they exist when it runs.
from fastdl.norm_backward import (batch_norm_backward, group_norm_backward,  # noqa: E402
                                  instance_norm_backward, layer_norm_backward,
                                  rms_norm_backward)
