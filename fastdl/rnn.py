"""Bidirectional tanh RNN: forward, backpropagation through time, and its analysis.

The model (torch.nn.RNN's, bidirectional, one layer, with an output projection)::

    h_t^(f) = tanh(W_f x_t + U_f h_{t-1}^(f) + b_f)      t = 1 .. T, from h_0^(f)
    h_t^(b) = tanh(W_b x_t + U_b h_{t+1}^(b) + b_b)      t = T .. 1, from h_{T+1}^(b)
    y_t     = V_f h_t^(f) + V_b h_t^(b) + c

W is (hidden, d_in) and applied as ``W x_t``, U is (hidden, hidden), V is
(d_out, hidden); the biases are optional (off by default, so the plain case is
the three equations without them).  Arrays index steps from 0: ``y[t]`` is
y_{t+1}.  Inputs are (T, d_in) for one sequence, (T, B, d_in) for a batch, or
(B, T, d_in) with ``batch_first=True``; ``lengths`` gives the real length of
each sequence of a padded batch (torch's packed sequences): the backward
direction starts at each sequence's own last step, outputs past a length are 0
and the gradients ignore the padding.

    params = BiRNNParams.init(d_in=8, hidden=16, rng=0)
    y, cache = birnn_forward(x, params)
    grads = birnn_backward(cache, dy)                # BiRNNGrads: every parameter, h0s, x
    loss, grads = birnn_loss_and_grads(x, z, params)  # L = sum_t ||z_t - y_t||^2

The analysis (Jacobians between hidden states, the recursion's terms, gradient
norms over time, the unrolled graph) is in ``fastdl.rnn_analysis`` and
re-exported here.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

import numpy as np

from fastdl import ops as _ops
from fastdl import registry
from fastdl._validate import FLOAT_DTYPES, check_finite, plain_array
from fastdl.ops.rnn import check_lengths, valid_steps

__all__ = ["BiRNNParams", "BiRNNCache", "BiRNNGrads", "birnn_forward", "birnn_backward",
           "birnn_loss_and_grads", "PARAM_NAMES"]

PARAM_NAMES = ("W_f", "U_f", "V_f", "W_b", "U_b", "V_b", "b_f", "b_b", "c")
_BIASES = ("b_f", "b_b", "c")


def _own_copy(a: np.ndarray, caller) -> np.ndarray:
    """a, copied when it is (a view of) the caller's array: the cache must not change
    when the caller later changes its array in place."""
    return a.copy() if np.may_share_memory(a, caller) else a


def _converted(a: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """A real array in ``dtype``: non-finite values are named as given, and a cast that
    overflows (float64 to float32) is an error rather than inf."""
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    check_finite(a, name)
    with np.errstate(over="ignore"):         # an overflow is the error raised below
        out = np.ascontiguousarray(a, dtype=dtype)
    if out.dtype != a.dtype and not np.isfinite(out).all():
        raise ValueError(f"{name} has values too large for {dtype} (the parameters' dtype), "
                         f"largest |value| {float(np.max(np.abs(a)))}")
    return out


def _float_dtype(dtype, name="dtype") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {dt}")
    return dt


@dataclass(eq=False)
class BiRNNParams:
    """The weights of a bidirectional RNN, named as in the equations of ``fastdl.rnn``.

    W_f, W_b: (hidden, d_in); U_f, U_b: (hidden, hidden); V_f, V_b: (d_out, hidden);
    b_f, b_b: (hidden,) and c: (d_out,) or all three None.  Every array has one
    dtype (float32 or float64).  The arrays are used as given (no copy); update
    them in place to train (``p -= lr * g``).
    """

    W_f: np.ndarray
    U_f: np.ndarray
    V_f: np.ndarray
    W_b: np.ndarray
    U_b: np.ndarray
    V_b: np.ndarray
    b_f: np.ndarray | None = None
    b_b: np.ndarray | None = None
    c: np.ndarray | None = None

    def __post_init__(self):
        self.check()

    @classmethod
    def init(cls, d_in: int, hidden: int, d_out: int | None = None, *, bias: bool = False,
             rng=None, dtype=np.float32) -> "BiRNNParams":
        """Random weights as torch initializes nn.RNN and nn.Linear: every entry uniform
        in ±1/√hidden (V too: its fan-in is hidden per direction).  ``d_out`` defaults
        to ``hidden``; ``rng`` is a seed or a numpy Generator."""
        for name, v in (("d_in", d_in), ("hidden", hidden)) + (
                (("d_out", d_out),) if d_out is not None else ()):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        d_out = hidden if d_out is None else int(d_out)
        dt = _float_dtype(dtype)
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"bias must be a bool, got {bias!r}")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        s = 1.0 / np.sqrt(hidden)

        def u(*shape):
            return gen.uniform(-s, s, shape).astype(dt)

        arrays = dict(W_f=u(hidden, d_in), U_f=u(hidden, hidden), V_f=u(d_out, hidden),
                      W_b=u(hidden, d_in), U_b=u(hidden, hidden), V_b=u(d_out, hidden))
        if bias:
            arrays.update(b_f=u(hidden), b_b=u(hidden), c=u(d_out))
        return cls(**arrays)

    # ------------------------------------------------------------ facts
    @property
    def d_in(self) -> int:
        return self.W_f.shape[1]

    @property
    def hidden(self) -> int:
        return self.W_f.shape[0]

    @property
    def d_out(self) -> int:
        return self.V_f.shape[0]

    @property
    def dtype(self) -> np.dtype:
        return self.W_f.dtype

    @property
    def bias(self) -> bool:
        return self.b_f is not None

    def arrays(self) -> dict:
        """``{name: array}`` of the parameters present (the biases only when there are)."""
        return {n: getattr(self, n) for n in PARAM_NAMES if getattr(self, n) is not None}

    def copy(self) -> "BiRNNParams":
        return BiRNNParams(**{n: a.copy() for n, a in self.arrays().items()})

    def astype(self, dtype) -> "BiRNNParams":
        dt = _float_dtype(dtype)
        return BiRNNParams(**{n: a.astype(dt) for n, a in self.arrays().items()})

    def check(self) -> None:
        """Shapes and dtypes agree (TypeError/ValueError naming the array otherwise)."""
        for n in PARAM_NAMES:
            a = getattr(self, n)
            if a is None:
                if n not in _BIASES:
                    raise TypeError(f"{n} must be an array, got None")
                continue
            if not isinstance(a, np.ndarray):
                a = plain_array(a, n)
                setattr(self, n, a)
            elif type(a) is not np.ndarray:
                a = a.view(np.ndarray)
                setattr(self, n, a)
            if a.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{n} must be a float32 or float64 array, got dtype {a.dtype}")
        present = [getattr(self, n) is not None for n in _BIASES]
        if any(present) and not all(present):
            raise ValueError("b_f, b_b and c must be all given or all None, got "
                             + ", ".join(f"{n}={'array' if p else 'None'}"
                                         for n, p in zip(_BIASES, present)))
        dt = self.W_f.dtype
        for n, a in self.arrays().items():
            if a.dtype != dt:
                raise TypeError(f"{n} must have W_f's dtype {dt}, got {a.dtype}")
        if self.W_f.ndim != 2 or 0 in self.W_f.shape:
            raise ValueError(f"W_f must be a non-empty 2-D (hidden, d_in) array, "
                             f"got shape {self.W_f.shape}")
        if self.V_f.ndim != 2 or self.V_f.shape[0] == 0:
            raise ValueError(f"V_f must be a non-empty 2-D (d_out, hidden) array, "
                             f"got shape {self.V_f.shape}")
        H, I, O = self.hidden, self.d_in, self.d_out
        want = dict(W_f=(H, I), U_f=(H, H), V_f=(O, H), W_b=(H, I), U_b=(H, H), V_b=(O, H),
                    b_f=(H,), b_b=(H,), c=(O,))
        for n, a in self.arrays().items():
            if a.shape != want[n]:
                raise ValueError(f"{n} must have shape {want[n]} (hidden={H}, d_in={I}, "
                                 f"d_out={O} from W_f and V_f), got {a.shape}")


@dataclass(eq=False)
class BiRNNCache:
    """What ``birnn_backward`` needs from a forward: time-major (T, B, ·) copies of
    x, of both directions' hidden states and of y, the parameters (by reference: do
    not change them before the backward), copies of the initial states and of the
    lengths (None when every sequence is full)."""

    x: np.ndarray
    h_f: np.ndarray
    h_b: np.ndarray
    y: np.ndarray
    params: BiRNNParams
    h0_f: np.ndarray | None
    h0_b: np.ndarray | None
    lengths: np.ndarray | None
    batch_first: bool
    unbatched: bool
    backend: str | None = None

    @property
    def T(self) -> int:
        return self.x.shape[0]

    @property
    def B(self) -> int:
        return self.x.shape[1]

    def valid(self) -> np.ndarray:
        """(T, B) bool: step t of sequence i is real, not padding."""
        return valid_steps(self.lengths, self.T, self.B)

    def to_caller(self, a: np.ndarray) -> np.ndarray:
        """A time-major (T, B, ·) array in the layout of the forward's input."""
        if self.unbatched:
            return a[:, 0]
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if self.batch_first else a

    def from_caller(self, a, name: str, features: int) -> np.ndarray:
        """An array in the forward input's layout as a time-major (T, B, features) one."""
        a = plain_array(a, name)
        want = ((self.T, features) if self.unbatched else
                (self.B, self.T, features) if self.batch_first else (self.T, self.B, features))
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
        if a.shape != want:
            raise ValueError(f"{name} must have shape {want} (the forward's output), "
                             f"got {a.shape}")
        a = _converted(a, self.x.dtype, name)
        if self.unbatched:
            a = a[:, None]
        elif self.batch_first:
            a = a.transpose(1, 0, 2)
        return np.ascontiguousarray(a)


@dataclass(eq=False)
class BiRNNGrads:
    """Gradients of a loss: one per parameter (the biases None when the model has
    none), the initial states h0_f, h0_b and the input x (None when not asked for),
    in the shapes and layout of what they are the gradient of."""

    W_f: np.ndarray
    U_f: np.ndarray
    V_f: np.ndarray
    W_b: np.ndarray
    U_b: np.ndarray
    V_b: np.ndarray
    b_f: np.ndarray | None = None
    b_b: np.ndarray | None = None
    c: np.ndarray | None = None
    h0_f: np.ndarray | None = None
    h0_b: np.ndarray | None = None
    x: np.ndarray | None = None

    def params(self) -> dict:
        """``{name: gradient}`` for the parameters present (keys of BiRNNParams.arrays())."""
        return {n: getattr(self, n) for n in PARAM_NAMES if getattr(self, n) is not None}

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


# ---------------------------------------------------------------- forward / backward

def _state(h0, name, B, H, dtype, unbatched):
    if h0 is None:
        return None
    a = plain_array(h0, name)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real array, got dtype {a.dtype}")
    want = (H,) if unbatched else (B, H)
    if a.shape != want:
        raise ValueError(f"{name} must have shape {want} "
                         + (f"(hidden={H}: x is one sequence)" if unbatched
                            else f"(batch B={B}, hidden={H})") + f", got {a.shape}")
    return _own_copy(_converted(a, dtype, name).reshape(B, H), h0)


def _lengths(lengths, T, B):
    if lengths is None:
        return None
    a = plain_array(lengths, "lengths")
    if a.dtype.kind not in "iu":
        raise TypeError(f"lengths must be an integer array, got dtype {a.dtype}")
    if a.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},) (one length per sequence of the "
                         f"batch), got {a.shape}")
    check_lengths(a, T)
    return _own_copy(np.ascontiguousarray(a, dtype=np.int64), lengths)


def _input(x, params, batch_first, own=True):
    given = x
    x = plain_array(x, "x")
    if not isinstance(given, np.ndarray) and x.dtype.kind in "iuf":
        x = x.astype(params.dtype)           # a nested list has no dtype of its own
    if x.dtype.kind == "f" and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be a float32 or float64 array (the parameters' dtype "
                        f"{params.dtype}), got dtype {x.dtype}")
    if x.dtype != params.dtype:
        raise TypeError(f"x must have the parameters' dtype {params.dtype}, got {x.dtype}; "
                        f"convert x (x.astype(np.{params.dtype})) or the parameters "
                        f"(params.astype(np.{x.dtype}))")
    if x.ndim not in (2, 3):
        raise ValueError(f"x must be 2-D (T, d_in) or 3-D ({'B, T' if batch_first else 'T, B'}"
                         f", d_in), got shape {x.shape}")
    if x.shape[-1] != params.d_in:
        raise ValueError(f"x must have d_in={params.d_in} features (W_f has shape "
                         f"{params.W_f.shape}), got shape {x.shape}")
    unbatched = x.ndim == 2
    tm = x[:, None] if unbatched else (x.transpose(1, 0, 2) if batch_first else x)
    if tm.shape[0] == 0:
        raise ValueError(f"x must have at least one step (T >= 1), got shape {x.shape}")
    if tm.shape[1] == 0:
        raise ValueError(f"x must hold at least one sequence (B >= 1), got shape {x.shape}")
    tm = np.ascontiguousarray(tm)
    if own:
        tm = _own_copy(tm, given)
    check_finite(tm, "x")
    return tm, unbatched


def birnn_forward(x, params: BiRNNParams, h0_f=None, h0_b=None, *, lengths=None,
                  batch_first: bool = False, backend: str | None = None):
    """Outputs y and the cache for ``birnn_backward``.

    x: (T, d_in), (T, B, d_in), or (B, T, d_in) with ``batch_first``, an array of
    the parameters' dtype (any strides or byte order; a nested list is read in that
    dtype); h0_f, h0_b: (B, hidden) (or (hidden,) for one sequence), the states
    before the first step of each direction (h_0^(f) and h_{T+1}^(b); None: zeros),
    converted to the parameters' dtype; lengths: (B,) ints in [1, T].  y has x's
    layout with d_out features (0 past each length).  Non-finite inputs are a
    ValueError.  The cache keeps its own copies: the caller may change x, h0 and
    lengths (but not the parameters) before the backward.
    """
    return _forward(x, params, h0_f, h0_b, lengths, batch_first, backend, True)


def _forward(x, params, h0_f, h0_b, lengths, batch_first, backend, own):
    """birnn_forward; ``own``: the cache copies what it shares with the caller's
    arrays, and y is not the cache's array (False inside birnn_loss_and_grads, whose
    caller cannot change them between the two passes)."""
    if not isinstance(params, BiRNNParams):
        raise TypeError(f"params must be a fastdl.rnn.BiRNNParams, got {type(params).__name__}")
    try:
        params.check()             # the arrays may have been replaced since construction
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"params: {exc}") from None
    if not isinstance(batch_first, (bool, np.bool_)):
        raise TypeError(f"batch_first must be a bool, got {batch_first!r}")
    for n, a in params.arrays().items():
        check_finite(a, f"params.{n}")
    xt, unbatched = _input(x, params, bool(batch_first), own)
    T, B, _ = xt.shape
    H, dt = params.hidden, xt.dtype
    if unbatched and lengths is not None:
        raise ValueError("lengths is for a batch of sequences; x is one sequence (2-D), "
                         f"got lengths={lengths!r}")
    h0f = _state(h0_f, "h0_f", B, H, dt, unbatched)
    h0b = _state(h0_b, "h0_b", B, H, dt, unbatched)
    lens = _lengths(lengths, T, B)
    if lens is not None and (lens == T).all():
        lens = None                          # every sequence full: nothing is padding
    p = params
    y, h_f, h_b = _ops.birnn_fwd(xt, p.W_f, p.U_f, p.V_f, p.W_b, p.U_b, p.V_b, p.b_f, p.b_b,
                                 p.c, h0f, h0b, lens, backend=backend)
    cache = BiRNNCache(xt, h_f, h_b, y, params, h0f, h0b, lens, bool(batch_first), unbatched,
                       backend)
    out = cache.to_caller(y)
    return (out.copy() if own and np.may_share_memory(out, y) else out), cache


def birnn_backward(cache: BiRNNCache, dy, *, need_dx: bool = True,
                   backend: str | None = None) -> BiRNNGrads:
    """Gradients of a loss L given dy = dL/dy (the forward output's shape) by
    backpropagation through time: per direction the recursion
    dL/dh_t = dL_t/dh_t + (dh_next/dh_t)^T dL/dh_next (next: t+1 forward, t-1
    backward), then every weight gradient as a sum over the steps.  dy at padded
    steps is ignored.  ``backend`` defaults to the forward's."""
    if not isinstance(cache, BiRNNCache):
        raise TypeError(f"cache must be the BiRNNCache of birnn_forward, got "
                        f"{type(cache).__name__}")
    if not isinstance(need_dx, (bool, np.bool_)):
        raise TypeError(f"need_dx must be a bool, got {need_dx!r}")
    p = cache.params
    if not isinstance(p, BiRNNParams):
        raise TypeError(f"cache.params must be a BiRNNParams, got {type(p).__name__}")
    try:
        p.check()
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"cache.params were changed after the forward: {exc}") from None
    I, H, O = cache.x.shape[2], cache.h_f.shape[2], cache.y.shape[2]
    if (p.dtype, p.d_in, p.hidden, p.d_out) != (cache.x.dtype, I, H, O):
        raise ValueError(f"cache.params were changed after the forward: it ran with dtype "
                         f"{cache.x.dtype}, d_in={I}, hidden={H}, d_out={O}; they now have "
                         f"dtype {p.dtype}, d_in={p.d_in}, hidden={p.hidden}, d_out={p.d_out}")
    for n, a in p.arrays().items():
        check_finite(a, f"cache.params.{n}")
    dyt = cache.from_caller(dy, "dy", p.d_out)
    res = _ops.birnn_bwd(dyt, cache.x, cache.h_f, cache.h_b, p.W_f, p.U_f, p.V_f, p.W_b, p.U_b,
                         p.V_b, cache.h0_f, cache.h0_b, cache.lengths, bool(need_dx),
                         backend=cache.backend if backend is None else backend)
    dW_f, dU_f, dV_f, db_f, dW_b, dU_b, dV_b, db_b, dc, dh0_f, dh0_b, dx = res
    if cache.unbatched:
        dh0_f, dh0_b = dh0_f[0], dh0_b[0]
    bias = p.bias
    return BiRNNGrads(dW_f, dU_f, dV_f, dW_b, dU_b, dV_b,
                      db_f if bias else None, db_b if bias else None, dc if bias else None,
                      dh0_f, dh0_b, cache.to_caller(dx) if need_dx else None)


def birnn_loss_and_grads(x, z, params: BiRNNParams, h0_f=None, h0_b=None, *, lengths=None,
                         batch_first: bool = False, need_dx: bool = True,
                         backend: str | None = None):
    """(L, grads) for the sum-of-squares loss L = Σ_t ||z_t - y_t||² over the real steps
    (z: the targets, in y's shape); dL/dy = -2 (z - y)."""
    y, cache = _forward(x, params, h0_f, h0_b, lengths, batch_first, backend, False)
    loss, dy = _squared_error(cache, z)
    return loss, birnn_backward(cache, dy, need_dx=need_dx)


def _squared_error(cache: BiRNNCache, z):
    """(L, dL/dy in the forward input's layout) for L = Σ_t ||z_t - y_t||² over the real
    steps: the residual squared once in its own dtype, summed in float64."""
    r = cache.from_caller(z, "z", cache.params.d_out) - cache.y
    if cache.lengths is not None:
        r[~cache.valid()] = 0
    loss = float(np.sum(r * r, dtype=np.float64))
    r *= -2                                  # dL/dy, in place
    return loss, cache.to_caller(r)


def __getattr__(name):
    # the analysis functions live in fastdl.rnn_analysis (imported on first use); probes for
    # dunder attributes (copy, pickle, inspect, test runners) do not import it
    if name.startswith("__"):
        raise AttributeError(f"module 'fastdl.rnn' has no attribute {name!r}")
    from fastdl import rnn_analysis
    if name in rnn_analysis.__all__:
        return getattr(rnn_analysis, name)
    raise AttributeError(f"module 'fastdl.rnn' has no attribute {name!r}")
