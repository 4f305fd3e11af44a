"""The bidirectional tanh RNN ops: the whole forward and the whole backward.

Arrays are time-major and C-contiguous: x is (T, B, I); the weights are
W (H, I) applied as ``W x_t``, U (H, H) and V (O, H), all of x's dtype
(float32 or float64).  The forward direction runs t = 0 .. T-1 from h0_f, the
backward direction t = T-1 .. 0 from h0_b (None: zeros)::

    h_f[t] = tanh(W_f x[t] + U_f h_f[t-1] + b_f)
    h_b[t] = tanh(W_b x[t] + U_b h_b[t+1] + b_b)
    y[t]   = V_f h_f[t] + V_b h_b[t] + c

``lengths`` (B,) int64 in [1, T], or None (every sequence has T steps): the
backward direction of sequence i starts at its own last step lengths[i] - 1
from h0_b[i]; at t >= lengths[i] h_f, h_b and y are 0 and dy is ignored.
"""
from __future__ import annotations

import numpy as np

from fastdl.ops._spec import Arg, OpSpec, Result, define

_ASSUME = ("arrays C-contiguous and aligned, x non-empty, every array of x's dtype and the "
           "declared shape, lengths int64 in [1, T]")


def _w(name, shape):
    return Arg(name, dtype="like:x", shape=shape)


def _opt(name, shape):
    return Arg(name, dtype="like:x", shape=shape, optional=True)


_X = Arg("x", dtype="float32|float64", shape=("T", "B", "I"), nonempty=True)
_WEIGHTS = (_w("W_f", ("H", "I")), _w("U_f", ("H", "H")), _w("V_f", ("O", "H")),
            _w("W_b", ("H", "I")), _w("U_b", ("H", "H")), _w("V_b", ("O", "H")))
_STATE = (_opt("h0_f", ("B", "H")), _opt("h0_b", ("B", "H")),
          Arg("lengths", dtype="int64", shape=("B",), optional=True))


def check_lengths(lengths: np.ndarray, T: int) -> None:
    """ValueError naming the first length outside [1, T]."""
    bad = (lengths < 1) | (lengths > T)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"lengths must be in [1, T={T}], got lengths[{i}] = {int(lengths[i])}")


def valid_steps(lengths, T: int, B: int) -> np.ndarray:
    """(T, B) bool: step t of sequence i is real, not padding (all True without lengths)."""
    if lengths is None:
        return np.ones((T, B), bool)
    return np.arange(T)[:, None] < np.asarray(lengths)[None, :]


def _lengths_rule(values, dims):
    if values["lengths"] is not None:
        check_lengths(values["lengths"], dims["T"])


# ------------------------------------------------------------- samplers (conformance suite)

def _dims(rng, tiny):
    if tiny:
        return 1, 1, 1, 1, 1
    return tuple(int(rng.choice(c)) for c in
                 ([1, 2, 3, 7, 17], [1, 2, 3, 5, 8], [1, 3, 8, 17], [1, 4, 8, 17, 33], [1, 3, 9]))


def _sample_model(rng, dtype, tiny):
    T, B, I, H, O = _dims(rng, tiny)
    s = 1 / np.sqrt(H)

    def u(*shape):
        return rng.uniform(-s, s, shape).astype(dtype)

    def maybe(*shape):
        return u(*shape) if rng.random() < 0.6 else None

    x = rng.standard_normal((T, B, I)).astype(dtype)
    weights = (u(H, I), u(H, H), u(O, H), u(H, I), u(H, H), u(O, H))
    state = (maybe(B, H), maybe(B, H),
             rng.integers(1, T + 1, B).astype(np.int64) if rng.random() < 0.5 else None)
    return x, weights, (maybe(H), maybe(H), maybe(O)), state


def _s_fwd(rng, dtype, tiny=False):
    x, weights, biases, state = _sample_model(rng, dtype, tiny)
    return (x,) + weights + biases + state


def _s_bwd(rng, dtype, tiny=False):
    from fastdl._backends.numpy.rnn import birnn_fwd
    x, weights, biases, state = _sample_model(rng, dtype, tiny)
    _, h_f, h_b = birnn_fwd(x, *weights, *biases, *state)
    T, B, _ = x.shape
    dy = rng.standard_normal((T, B, weights[2].shape[0])).astype(dtype)
    return (dy, x, h_f, h_b) + weights + state + (bool(rng.random() < 0.7),)


# ------------------------------------------------------------- the specs

birnn_fwd = define(OpSpec(
    "birnn_fwd", area="rnn",
    args=(_X,) + _WEIGHTS + (_opt("b_f", ("H",)), _opt("b_b", ("H",)), _opt("c", ("O",)))
    + _STATE,
    results=(Result("y", "like:x", ("T", "B", "O")), Result("h_f", "like:x", ("T", "B", "H")),
             Result("h_b", "like:x", ("T", "B", "H"))),
    doc="outputs and both directions' hidden states of a bidirectional tanh RNN",
    assume=_ASSUME, rule=_lengths_rule, sample=_s_fwd))

birnn_bwd = define(OpSpec(
    "birnn_bwd", area="rnn",
    args=(Arg("dy", dtype="like:x", shape=("T", "B", "O")), _X,
          Arg("h_f", dtype="like:x", shape=("T", "B", "H")),
          Arg("h_b", dtype="like:x", shape=("T", "B", "H"))) + _WEIGHTS + _STATE
    + (Arg("need_dx", kind="flag"),),
    results=tuple(Result(n, "like:x", s) for n, s in (
        ("dW_f", ("H", "I")), ("dU_f", ("H", "H")), ("dV_f", ("O", "H")), ("db_f", ("H",)),
        ("dW_b", ("H", "I")), ("dU_b", ("H", "H")), ("dV_b", ("O", "H")), ("db_b", ("H",)),
        ("dc", ("O",)), ("dh0_f", ("B", "H")), ("dh0_b", ("B", "H"))))
    + (Result("dx", "like:x", ("T", "B", "I"), optional=True),),
    doc="gradients of every parameter, of both initial states and (need_dx) of x, given "
        "dy = dL/dy and the forward's hidden states (the biases' gradients are the sums of "
        "the pre-activation gradients whether or not the model has biases)",
    assume=_ASSUME, rule=_lengths_rule, sample=_s_bwd))

RNN_OPS = (birnn_fwd, birnn_bwd)
