"""Normalization layers: small stateful wrappers over ``fastdl.norm``.

Each layer holds its affine parameters, their gradients and (batch/instance
norm) running statistics, and calls the functional op with
``return_stats=True`` so that ``backward`` reuses the forward's statistics::

    layer = fastdl.nn.LayerNorm(256)
    y = layer(x)                  # forward; keeps x and the NormStats
    dx = layer.backward(dy)       # fills layer.grads["weight"], layer.grads["bias"]

Conventions, shared by every layer:

* ``params``: dict ``name -> ndarray`` (``"weight"``, ``"bias"`` when the layer
  has them); update them in place (``p -= lr * g``).  ``layer.weight`` /
  ``layer.bias`` are the same arrays (or None).
* ``grads``: the same keys and shapes.  ``backward`` OVERWRITES them (it does not
  accumulate like ``torch.Tensor.grad``); ``zero_grad()`` fills them with zeros.
* Only the LAST forward is kept: ``backward(dy)`` differentiates the most recent
  ``forward`` (it may be called more than once).  The input is kept by
  reference, not copied, and backward reads the parameters as they are when it
  runs: do not modify either between a forward and its backward.
* ``train()`` / ``eval()`` switch ``training`` and return the layer;
  ``backward`` follows the mode its forward ran in.
* Constructor arguments are torch's (``bias=False`` keeps the weight and drops the
  bias); ``InstanceNorm1d/2d/3d`` also take torch's unbatched inputs.
* ``backend=`` (constructor argument, attribute) is passed to every call; an
  unknown backend name is a ValueError when it is given or assigned.
"""
from __future__ import annotations

import numbers
from abc import ABC, abstractmethod

import numpy as np

from fastdl import norm as F
from fastdl import registry
from fastdl._validate import FLOAT_DTYPES, as_float_array, check_flag, check_int, check_real
from fastdl.nn_rnn import BiRNN

__all__ = ["Module", "BatchNorm", "LayerNorm", "InstanceNorm", "InstanceNorm1d", "InstanceNorm2d",
           "InstanceNorm3d", "GroupNorm", "RMSNorm", "BiRNN"]


# ---------------------------------------------------------------- argument checks

def _dtype(value) -> np.dtype:
    if value is None:          # torch's default dtype
        return np.dtype(np.float32)
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {value!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _backend(value):
    """None or the name of a registered backend: an unknown name fails here, when the
    layer is configured, not at its first forward."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"backend must be a backend name (str) or None, got {value!r} "
                        f"({type(value).__name__})")
    if value is not None:
        registry._check_names((value,))
    return value


def _eps(value) -> float:
    return check_real(value, "eps", low=0.0)


def _momentum(value):
    return None if value is None else check_real(value, "momentum", low=0.0, high=1.0)


def _shape(value) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    elif isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError("normalized_shape must be an int or a sequence of ints, got "
                        f"{value!r} ({type(value).__name__})")
    shape = tuple(check_int(s, "normalized_shape entries", minimum=1) for s in value)
    if not shape:
        raise ValueError("normalized_shape must have at least one dimension, got ()")
    return shape


# ---------------------------------------------------------------- base class

class Module(ABC):
    """Base of the layers: parameters, gradients, train/eval mode, forward/backward.

    Subclasses implement ``_forward(x) -> (y, stats, ctx)`` and
    ``_backward(dy, x, stats, ctx) -> (dx, dweight, dbias)``.
    """

    def __init__(self, backend=None):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        self.backend = backend
        self._saved = None

    @property
    def backend(self):
        """Backend name passed to every call (None: the registry's choice)."""
        return self._backend

    @backend.setter
    def backend(self, value):
        self._backend = _backend(value)

    def _add_param(self, name: str, shape, dtype, fill: float) -> None:
        self.params[name] = np.full(shape, fill, dtype=dtype)
        self.grads[name] = np.zeros(shape, dtype=dtype)

    @property
    def weight(self):
        return self.params.get("weight")

    @property
    def bias(self):
        return self.params.get("bias")

    def train(self, mode: bool = True):
        self.training = check_flag(mode, "mode")
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def reset_parameters(self) -> None:
        """Weight to ones, bias to zeros."""
        if "weight" in self.params:
            self.params["weight"].fill(1)
        if "bias" in self.params:
            self.params["bias"].fill(0)

    def forward(self, x) -> np.ndarray:
        """Normalize ``x``; keeps ``x`` (by reference) and the statistics for ``backward``."""
        x = as_float_array(x, "input", keep_half=True)     # float16 stays float16, as torch
        y, stats, ctx = self._forward(x)
        self._saved = (x, stats, ctx)
        return y

    def __call__(self, x) -> np.ndarray:
        return self.forward(x)

    def backward(self, dy) -> np.ndarray:
        """Gradient w.r.t. the last forward's input; parameter gradients go into
        ``grads`` (overwritten, not accumulated)."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() was called before forward(): "
                               "there is no saved input to differentiate")
        x, stats, ctx = self._saved
        dx, dw, db = self._backward(dy, x, stats, ctx)
        for name, g in (("weight", dw), ("bias", db)):
            if name in self.grads:
                np.copyto(self.grads[name], g, casting="same_kind")
        return dx

    def _extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._extra_repr()})"

    @abstractmethod
    def _forward(self, x):
        ...

    @abstractmethod
    def _backward(self, dy, x, stats, ctx):
        ...


# ---------------------------------------------------------------- batch and instance norm

class _RunningNorm(Module):
    """Per-channel affine parameters and optional running statistics (batch/instance norm)."""

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, bias, dtype,
                 backend):
        super().__init__(backend)
        self.num_features = check_int(num_features, "num_features", minimum=1)
        self.eps = _eps(eps)
        self.momentum = _momentum(momentum)
        self.affine = check_flag(affine, "affine")
        self.track_running_stats = check_flag(track_running_stats, "track_running_stats")
        bias = check_flag(bias, "bias")
        self.dtype = _dtype(dtype)
        if self.affine:
            self._add_param("weight", (self.num_features,), self.dtype, 1)
            if bias:
                self._add_param("bias", (self.num_features,), self.dtype, 0)
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self.dtype)
            self.running_var = np.ones(self.num_features, self.dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        """Running mean to zeros, running variance to ones, ``num_batches_tracked`` to 0."""
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked = 0

    def reset_parameters(self) -> None:
        """Running statistics reset, weight to ones, bias to zeros (as torch does)."""
        self.reset_running_stats()
        super().reset_parameters()

    def _check_input(self, x: np.ndarray) -> None:
        if x.ndim < 2:
            raise ValueError(f"input must have at least 2 dimensions (N, C, *spatial), "
                             f"got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"input must have num_features={self.num_features} channels in "
                             f"dimension 1, got shape {x.shape}")

    def _updating(self) -> bool:
        return self.training and self.track_running_stats

    def _factor(self) -> float:
        """Momentum of this training step; None means a cumulative average (1 / steps)."""
        if self.momentum is None:
            return 1.0 / (self.num_batches_tracked + 1)
        return self.momentum

    def _buffers(self):
        return (self.running_mean, self.running_var) if self._updating() else (None, None)

    def _extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={'bias' in self.params}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm(_RunningNorm):
    """``torch.nn.BatchNorm1d/2d/3d`` on (N, C, *spatial) inputs.

    Training: normalize with the batch statistics per channel and, with
    ``track_running_stats``, update ``running = (1 - momentum) * running +
    momentum * batch`` (unbiased batch variance); ``momentum=None`` uses the
    cumulative average, factor ``1 / num_batches_tracked``.  Eval: normalize
    with the running statistics, or with the batch statistics when
    ``track_running_stats=False``.  ``bias=False`` (with ``affine``) keeps the
    weight and drops the bias, as torch's ``bias=`` does.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, bias=True, dtype=None, backend=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias, dtype,
                         backend)

    def _forward(self, x):
        self._check_input(x)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            rm, rv = self._buffers()
            momentum = self._factor() if rm is not None else 0.0
        else:
            rm, rv, momentum = self.running_mean, self.running_var, 0.0
        y, stats = F.batch_norm(x, rm, rv, self.weight, self.bias, use_batch, momentum,
                                self.eps, return_stats=True, backend=self.backend)
        if use_batch and rm is not None:
            self.num_batches_tracked += 1
        return y, stats, use_batch

    def _backward(self, dy, x, stats, use_batch):
        rm, rv = (None, None) if use_batch else (self.running_mean, self.running_var)
        return F.batch_norm_backward(dy, x, rm, rv, self.weight, self.bias, use_batch, 0.0,
                                     self.eps, stats=stats, backend=self.backend)


class InstanceNorm(_RunningNorm):
    """``torch.nn.InstanceNorm1d/2d/3d`` on (N, C, *spatial) inputs, or one unbatched
    (C, L) instance (2-D input: without spatial dims there is nothing to normalize, so
    a 2-D input is read as torch's unbatched ``InstanceNorm1d`` input).

    Each (n, c) is normalized by its own statistics over the spatial dims.  With
    ``track_running_stats`` the running buffers are updated in training (batch
    mean of the instance statistics, unbiased variance) and normalize in eval
    mode.  ``momentum=None`` is the cumulative average as for ``BatchNorm``
    (torch instead never updates the buffers then).  ``bias=False`` (with
    ``affine``) keeps the weight and drops the bias.  ``InstanceNorm1d/2d/3d``
    check the input rank as torch's classes do, batched or not.
    """

    _spatial = None     # number of spatial dims (None: any); the unbatched rank is _spatial + 1

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, *, bias=True, dtype=None, backend=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias, dtype,
                         backend)

    def _unbatched(self, x: np.ndarray) -> bool:
        if self._spatial is None:
            return x.ndim == 2
        if x.ndim not in (self._spatial + 1, self._spatial + 2):
            raise ValueError(f"{type(self).__name__} expects {self._spatial + 1}-D (unbatched) "
                             f"or {self._spatial + 2}-D input, got shape {x.shape}")
        return x.ndim == self._spatial + 1

    def forward(self, x) -> np.ndarray:
        """Normalize ``x``; an unbatched input is one instance of a batch of one, as in
        torch (the running buffers, if tracked, are updated from it)."""
        x = as_float_array(x, "input")
        if not self._unbatched(x):
            return super().forward(x)
        if x.shape[0] != self.num_features:
            raise ValueError(f"unbatched input must have num_features={self.num_features} "
                             f"channels in dimension 0, got shape {x.shape}")
        y, stats, ctx = self._forward(x[None])
        self._saved = (x, stats, (ctx, True))
        return y[0]

    def backward(self, dy) -> np.ndarray:
        saved = self._saved
        if saved is None or not isinstance(saved[2], tuple):
            return super().backward(dy)
        x, stats, (ctx, _) = saved
        dy = as_float_array(dy, "grad_output")
        if dy.shape != x.shape:
            raise ValueError(f"grad_output must have the input's shape {x.shape}, "
                             f"got {dy.shape}")
        self._saved = (x[None], stats, ctx)
        try:
            return super().backward(dy[None])[0]
        finally:
            self._saved = saved

    def _forward(self, x):
        self._check_input(x)
        use_input = self.training or not self.track_running_stats
        if use_input:
            rm, rv = self._buffers()
            momentum = self._factor() if rm is not None else 0.0
        else:
            rm, rv, momentum = self.running_mean, self.running_var, 0.0
        y, stats = F.instance_norm(x, rm, rv, self.weight, self.bias, use_input, momentum,
                                   self.eps, return_stats=True, backend=self.backend)
        if use_input and rm is not None:
            self.num_batches_tracked += 1
        return y, stats, use_input

    def _backward(self, dy, x, stats, use_input):
        rm, rv = (None, None) if use_input else (self.running_mean, self.running_var)
        return F.instance_norm_backward(dy, x, rm, rv, self.weight, self.bias, use_input, 0.0,
                                        self.eps, stats=stats, backend=self.backend)


class InstanceNorm1d(InstanceNorm):
    """``torch.nn.InstanceNorm1d``: (N, C, L) or unbatched (C, L) input."""
    _spatial = 1


class InstanceNorm2d(InstanceNorm):
    """``torch.nn.InstanceNorm2d``: (N, C, H, W) or unbatched (C, H, W) input."""
    _spatial = 2


class InstanceNorm3d(InstanceNorm):
    """``torch.nn.InstanceNorm3d``: (N, C, D, H, W) or unbatched (C, D, H, W) input."""
    _spatial = 3


# ---------------------------------------------------------------- group, layer and RMS norm

class GroupNorm(Module):
    """``torch.nn.GroupNorm``: statistics over groups of ``num_channels // num_groups``
    channels and the spatial dims of (N, C, *spatial); per-channel affine
    (``bias=False``: weight only)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, bias=True,
                 dtype=None, backend=None):
        super().__init__(backend)
        self.num_groups = check_int(num_groups, "num_groups", minimum=1)
        self.num_channels = check_int(num_channels, "num_channels", minimum=1)
        if self.num_channels % self.num_groups:
            raise ValueError(f"num_groups must divide num_channels, got num_groups="
                             f"{self.num_groups} and num_channels={self.num_channels}")
        self.eps = _eps(eps)
        self.affine = check_flag(affine, "affine")
        bias = check_flag(bias, "bias")
        self.dtype = _dtype(dtype)
        if self.affine:
            self._add_param("weight", (self.num_channels,), self.dtype, 1)
            if bias:
                self._add_param("bias", (self.num_channels,), self.dtype, 0)

    def _forward(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"input must have shape (N, num_channels={self.num_channels}, "
                             f"*spatial), got {x.shape}")
        y, stats = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps,
                                return_stats=True, backend=self.backend)
        return y, stats, None

    def _backward(self, dy, x, stats, ctx):
        return F.group_norm_backward(dy, x, self.num_groups, self.weight, self.bias, self.eps,
                                     stats=stats, backend=self.backend)

    def _extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={'bias' in self.params}")


class LayerNorm(Module):
    """``torch.nn.LayerNorm``: normalize over the trailing ``normalized_shape`` dims;
    elementwise weight/bias of that shape."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 *, dtype=None, backend=None):
        super().__init__(backend)
        self.normalized_shape = _shape(normalized_shape)
        self.eps = _eps(eps)
        self.elementwise_affine = check_flag(elementwise_affine, "elementwise_affine")
        bias = check_flag(bias, "bias")
        self.dtype = _dtype(dtype)
        if self.elementwise_affine:
            self._add_param("weight", self.normalized_shape, self.dtype, 1)
            if bias:
                self._add_param("bias", self.normalized_shape, self.dtype, 0)

    def _forward(self, x):
        y, stats = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                                return_stats=True, backend=self.backend)
        return y, stats, None

    def _backward(self, dy, x, stats, ctx):
        return F.layer_norm_backward(dy, x, self.normalized_shape, self.weight, self.bias,
                                     self.eps, stats=stats, backend=self.backend)

    def _extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={'bias' in self.params}")


class RMSNorm(Module):
    """``torch.nn.RMSNorm``: ``x / sqrt(mean(x**2) + eps) * weight`` over the trailing
    ``normalized_shape``; ``eps=None`` is the machine epsilon of the dtype it computes in (float32 for float16 input)."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, *, dtype=None,
                 backend=None):
        super().__init__(backend)
        self.normalized_shape = _shape(normalized_shape)
        self.eps = None if eps is None else _eps(eps)
        self.elementwise_affine = check_flag(elementwise_affine, "elementwise_affine")
        self.dtype = _dtype(dtype)
        if self.elementwise_affine:
            self._add_param("weight", self.normalized_shape, self.dtype, 1)

    def _forward(self, x):
        y, stats = F.rms_norm(x, self.normalized_shape, self.weight, self.eps,
                              return_stats=True, backend=self.backend)
        return y, stats, None

    def _backward(self, dy, x, stats, ctx):
        return F.rms_norm_backward(dy, x, self.normalized_shape, self.weight, self.eps,
                                   stats=stats, backend=self.backend)

    def _extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")
