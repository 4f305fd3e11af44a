"""The bidirectional RNN layer (``fastdl.nn.BiRNN``) and its torch interop.

A small stateful wrapper over ``fastdl.rnn`` with the conventions of the other
``fastdl.nn`` layers::

    layer = fastdl.nn.BiRNN(8, 16)            # d_in=8, hidden=16, d_out=16, no biases
    y = layer(x)                              # (T, 8) or (T, B, 8) -> (T, ·, 16); keeps the cache
    dx = layer.backward(dy)                   # fills layer.grads, layer.dh0_f, layer.dh0_b
    loss, grads = layer.loss_and_grads(x, z)  # sum of squares, the same in one call

* ``params``: dict ``name -> ndarray`` keyed by the names of ``fastdl.rnn.BiRNNParams``
  (W_f, U_f, V_f, W_b, U_b, V_b and, with ``bias=True``, b_f, b_b, c); update them in
  place (``p -= lr * g``).  ``layer.rnn_params`` is a BiRNNParams over the same arrays.
* ``grads``: the same keys and shapes; ``backward`` OVERWRITES them (no
  accumulation); ``zero_grad()`` fills them with zeros.  The gradients of the
  initial states are ``layer.dh0_f`` / ``layer.dh0_b`` (not parameters, so not in grads).
* Only the last forward is kept; its input is copied into the cache, but the
  parameters are read when ``backward`` runs: do not change them in between.

``BiRNN.from_torch(rnn, linear)`` copies the weights of a bidirectional
``torch.nn.RNN`` (and the ``torch.nn.Linear`` on its output), ``to_torch_state_dict()``
and ``to_torch()`` go back; torch is imported only by these methods.
"""
from __future__ import annotations

import numpy as np

from fastdl import registry
from fastdl import rnn as F
from fastdl._validate import check_flag, check_int

__all__ = ["BiRNN"]


def _dtype(value) -> np.dtype:
    return np.dtype(np.float32) if value is None else F._float_dtype(value)


def _backend(value):
    """None or a registered backend's name: an unknown name fails when configured."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"backend must be a backend name (str) or None, got {value!r} "
                        f"({type(value).__name__})")
    if value is not None:
        registry._check_names((value,))
    return value


def _torch(what: str):
    try:
        import torch
    except ImportError:
        raise ImportError(f"BiRNN.{what} needs torch, which is not installed "
                          f"(to_torch_state_dict() gives the weights as numpy arrays without it)"
                          ) from None
    return torch


def _generator(rng, name="rng") -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None and (isinstance(rng, bool) or not isinstance(rng, (int, np.integer))):
        raise TypeError(f"{name} must be None, an int seed or a numpy.random.Generator, "
                        f"got {rng!r} ({type(rng).__name__})")
    return np.random.default_rng(rng)


class BiRNN:
    """Bidirectional tanh RNN with a linear output, ``y_t = V_f h_t^(f) + V_b h_t^(b) + c``.

    ``d_out=None`` is ``hidden``; ``bias=True`` adds b_f, b_b and c; the weights are
    drawn as torch draws them (uniform in ±1/√hidden) from ``rng`` (a seed or a
    numpy Generator, kept for ``reset_parameters``).  Inputs are (T, d_in) for one
    sequence, (T, B, d_in) or, with ``batch_first``, (B, T, d_in); ``dtype`` None is
    float32.  ``layer.bias`` is a bool, as on ``torch.nn.RNN``.
    """

    def __init__(self, d_in, hidden, d_out=None, *, bias=False, batch_first=False, dtype=None,
                 backend=None, rng=None):
        self.d_in = check_int(d_in, "d_in", minimum=1)
        self.hidden = check_int(hidden, "hidden", minimum=1)
        self.d_out = self.hidden if d_out is None else check_int(d_out, "d_out", minimum=1)
        self.bias = check_flag(bias, "bias")
        self.batch_first = check_flag(batch_first, "batch_first")
        self.dtype = _dtype(dtype)
        self.backend = backend
        self.training = True
        self._rng = _generator(rng)
        p = F.BiRNNParams.init(self.d_in, self.hidden, self.d_out, bias=self.bias,
                               rng=self._rng, dtype=self.dtype)
        self.params: dict[str, np.ndarray] = p.arrays()
        self.grads: dict[str, np.ndarray] = {n: np.zeros_like(a) for n, a in self.params.items()}
        self.dh0_f = self.dh0_b = None
        self._cache = None

    # ------------------------------------------------------------ configuration
    @property
    def backend(self):
        """Backend name passed to every call (None: the registry's choice)."""
        return self._backend

    @backend.setter
    def backend(self, value):
        self._backend = _backend(value)

    @property
    def rnn_params(self) -> F.BiRNNParams:
        """A ``fastdl.rnn.BiRNNParams`` over the layer's own arrays (no copy), checked
        against the layer's shapes and dtype."""
        return self._checked_params()

    def _checked_params(self) -> F.BiRNNParams:
        if set(self.params) != set(self.grads):
            raise ValueError(f"layer.params must have the keys {sorted(self.grads)}, "
                             f"got {sorted(self.params)}")
        for n, g in self.grads.items():
            a = self.params[n]
            if not isinstance(a, np.ndarray) or a.shape != g.shape or a.dtype != g.dtype:
                got = (f"shape {a.shape} dtype {a.dtype}" if isinstance(a, np.ndarray)
                       else type(a).__name__)
                raise ValueError(f"layer.params[{n!r}] must be an array of shape {g.shape} "
                                 f"and dtype {g.dtype} (the layer's), got {got}")
        return F.BiRNNParams(**self.params)

    def train(self, mode: bool = True):
        """Set ``training`` (the RNN computes the same in both modes; kept for the
        layers' common interface) and return the layer."""
        self.training = check_flag(mode, "mode")
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)
        for g in (self.dh0_f, self.dh0_b):
            if g is not None:
                g.fill(0)

    def reset_parameters(self, rng=None) -> None:
        """Redraw every parameter in place (uniform in ±1/√hidden, as torch) from ``rng``
        (None: the layer's own generator, so a seeded layer resets reproducibly)."""
        gen = self._rng if rng is None else _generator(rng)
        fresh = F.BiRNNParams.init(self.d_in, self.hidden, self.d_out, bias=self.bias,
                                   rng=gen, dtype=self.dtype)
        for n, a in fresh.arrays().items():
            self.params[n][...] = a

    # ------------------------------------------------------------ forward / backward
    def forward(self, x, h0_f=None, h0_b=None, *, lengths=None) -> np.ndarray:
        """Outputs y in x's layout with d_out features (0 past each length); keeps the
        cache for ``backward``.  h0_f, h0_b: (B, hidden) or (hidden,) for one sequence;
        lengths: (B,) ints in [1, T] for a padded batch."""
        y, cache = F.birnn_forward(x, self._checked_params(), h0_f, h0_b, lengths=lengths,
                                   batch_first=self.batch_first, backend=self.backend)
        self._cache = cache
        return y

    def __call__(self, x, h0_f=None, h0_b=None, *, lengths=None) -> np.ndarray:
        return self.forward(x, h0_f, h0_b, lengths=lengths)

    def _backward(self, dy, need_dx):
        if self._cache is None:
            raise RuntimeError("BiRNN.backward() was called before forward(): there is no "
                               "saved forward to differentiate")
        g = F.birnn_backward(self._cache, dy, need_dx=need_dx, backend=self.backend)
        for n, a in g.params().items():
            np.copyto(self.grads[n], a)
        self.dh0_f, self.dh0_b = g.h0_f, g.h0_b
        return g.x

    def backward(self, dy) -> np.ndarray:
        """dL/dx given dy = dL/dy (the last forward's output shape); fills ``grads``
        (overwritten) and ``dh0_f`` / ``dh0_b``.  dy at padded steps is ignored."""
        return self._backward(dy, True)

    def loss_and_grads(self, x, z, h0_f=None, h0_b=None, *, lengths=None):
        """(L, grads) for L = Σ_t ||z_t - y_t||² over the real steps (z in y's shape):
        a forward and a backward (without dx) in one call; ``grads`` is ``layer.grads``."""
        self.forward(x, h0_f, h0_b, lengths=lengths)
        loss, dy = F._squared_error(self._cache, z)
        self._backward(dy, False)
        return loss, self.grads

    def __repr__(self) -> str:
        return (f"BiRNN({self.d_in}, {self.hidden}, {self.d_out}, bias={self.bias}, "
                f"batch_first={self.batch_first}, dtype={self.dtype.name}"
                + (f", backend={self.backend!r})" if self.backend is not None else ")"))

    # ------------------------------------------------------------ torch interop
    @classmethod
    def from_torch(cls, rnn, linear=None, *, backend=None) -> "BiRNN":
        """A layer with copies of the weights of a ``torch.nn.RNN(input_size, hidden_size,
        bidirectional=True, nonlinearity="tanh", num_layers=1)`` and, optionally, of the
        ``torch.nn.Linear(2 * hidden_size, d_out)`` applied to its output.

        torch's two biases add into one (b_f = bias_ih_l0 + bias_hh_l0, b_b from the
        ``_reverse`` set); V_f and V_b are the first and second halves of the Linear's
        columns.  ``linear=None``: d_out = 2 * hidden with V_f = [I; 0], V_b = [0; I], so
        y is torch's output [h_f, h_b].  The layer has biases when either module has:
        the missing ones are zeros.  ``batch_first`` is the RNN's.
        """
        torch = _torch("from_torch")
        if not isinstance(rnn, torch.nn.RNN):
            raise TypeError(f"rnn must be a torch.nn.RNN, got {type(rnn).__name__}")
        for what, ok, got in (
                ("bidirectional=True", rnn.bidirectional, f"bidirectional={rnn.bidirectional}"),
                ("num_layers=1", rnn.num_layers == 1, f"num_layers={rnn.num_layers}"),
                ("nonlinearity='tanh'", rnn.nonlinearity == "tanh",
                 f"nonlinearity={rnn.nonlinearity!r}"),
                ("proj_size=0", getattr(rnn, "proj_size", 0) == 0,
                 f"proj_size={getattr(rnn, 'proj_size', 0)}")):
            if not ok:
                raise ValueError(f"rnn must have {what} (a one-layer bidirectional tanh RNN), "
                                 f"got {got}")
        H, I = rnn.hidden_size, rnn.input_size

        def arr(t):
            return t.detach().cpu().numpy().copy()     # a copy: no memory shared with torch

        tdt = rnn.weight_ih_l0.dtype
        if tdt not in (torch.float32, torch.float64):
            raise TypeError(f"rnn's weights must be torch.float32 or torch.float64, got {tdt}")
        W_f = arr(rnn.weight_ih_l0)
        dt = W_f.dtype
        if linear is not None:
            if not isinstance(linear, torch.nn.Linear):
                raise TypeError(f"linear must be a torch.nn.Linear or None, got "
                                f"{type(linear).__name__}")
            if linear.in_features != 2 * H:
                raise ValueError(f"linear must have in_features = 2 * hidden_size = {2 * H} "
                                 f"(it reads [h_f, h_b]), got {linear.in_features}")
            if linear.weight.dtype != tdt:
                raise TypeError(f"linear must have the rnn's dtype {tdt}, "
                                f"got {linear.weight.dtype}")
        lin_bias = linear is not None and linear.bias is not None
        layer = cls(I, H, 2 * H if linear is None else linear.out_features,
                    bias=bool(rnn.bias or lin_bias), batch_first=bool(rnn.batch_first),
                    dtype=dt, backend=backend)
        p = layer.params
        p["W_f"][...], p["U_f"][...] = W_f, arr(rnn.weight_hh_l0)
        p["W_b"][...], p["U_b"][...] = arr(rnn.weight_ih_l0_reverse), arr(rnn.weight_hh_l0_reverse)
        if linear is None:
            eye = np.eye(H, dtype=dt)
            p["V_f"][...] = np.concatenate([eye, np.zeros_like(eye)])
            p["V_b"][...] = np.concatenate([np.zeros_like(eye), eye])
        else:
            V = arr(linear.weight)
            p["V_f"][...], p["V_b"][...] = V[:, :H], V[:, H:]
        if layer.bias:
            for n, suffix in (("b_f", ""), ("b_b", "_reverse")):
                p[n][...] = (arr(getattr(rnn, "bias_ih_l0" + suffix))
                             + arr(getattr(rnn, "bias_hh_l0" + suffix)) if rnn.bias else 0)
            p["c"][...] = arr(linear.bias) if lin_bias else 0
        return layer

    def to_torch_state_dict(self) -> dict:
        """``{"rnn": {...}, "linear": {...}}``: numpy copies of the weights under
        torch.nn.RNN's names (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0 and the
        ``_reverse`` set; bias_ih = b, bias_hh = 0) and torch.nn.Linear's (weight =
        [V_f, V_b] of shape (d_out, 2 * hidden), bias = c), for
        ``torch.nn.RNN(d_in, hidden, bidirectional=True, bias=layer.bias)`` and
        ``torch.nn.Linear(2 * hidden, d_out, bias=layer.bias)``: load each with
        ``load_state_dict({k: torch.from_numpy(v) ...})``, or use ``to_torch()``."""
        p = self._checked_params().arrays()
        rnn = {}
        for suffix, tag in (("", "f"), ("_reverse", "b")):
            rnn["weight_ih_l0" + suffix] = p["W_" + tag].copy()
            rnn["weight_hh_l0" + suffix] = p["U_" + tag].copy()
            if self.bias:
                rnn["bias_ih_l0" + suffix] = p["b_" + tag].copy()
                rnn["bias_hh_l0" + suffix] = np.zeros_like(p["b_" + tag])
        linear = {"weight": np.concatenate([p["V_f"], p["V_b"]], axis=1)}
        if self.bias:
            linear["bias"] = p["c"].copy()
        order = [k for s in ("", "_reverse") for k in
                 ("weight_ih_l0" + s, "weight_hh_l0" + s, "bias_ih_l0" + s, "bias_hh_l0" + s)]
        return {"rnn": {k: rnn[k] for k in order if k in rnn}, "linear": linear}

    def to_torch(self):
        """``(rnn, linear)``: a ``torch.nn.RNN`` (bidirectional, tanh, batch_first as the
        layer) and a ``torch.nn.Linear`` with copies of the weights, of the layer's dtype;
        ``linear(rnn(x)[0])`` is y at every real step (torch's padded steps give c, ours 0)."""
        torch = _torch("to_torch")
        tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
        state = self.to_torch_state_dict()
        rnn = torch.nn.RNN(self.d_in, self.hidden, num_layers=1, nonlinearity="tanh",
                           bias=self.bias, batch_first=self.batch_first, bidirectional=True,
                           dtype=tdt[self.dtype])
        linear = torch.nn.Linear(2 * self.hidden, self.d_out, bias=self.bias,
                                 dtype=tdt[self.dtype])
        for module, sd in ((rnn, state["rnn"]), (linear, state["linear"])):
            module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        return rnn, linear
