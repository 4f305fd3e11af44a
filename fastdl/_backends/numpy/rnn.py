"""Reference bidirectional tanh RNN: a step loop per direction, written to be read.

Conventions are those of ``fastdl.ops.rnn``: time-major (T, B, ·) arrays,
W applied as ``W @ x_t`` (so ``x[t] @ W.T`` for a batch of rows), padded steps
t >= lengths[i] are 0 in h and y and ignored in dy.  Computed in x's dtype
with NumPy's matmul.
"""
import numpy as np

from fastdl.ops.rnn import valid_steps


def _zeros_or(h0, B, H, dtype):
    return np.zeros((B, H), dtype) if h0 is None else h0


def _direction(xw, U, b, h0, valid, reverse):
    """Hidden states of one direction: state[i] advances only on real steps, so the
    backward direction of a padded sequence starts from h0 at its own last step."""
    T, B, H = xw.shape
    h = np.zeros((T, B, H), xw.dtype)
    state = h0.copy()
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        a = xw[t] + state @ U.T
        if b is not None:
            a += b
        new = np.tanh(a)
        m = valid[t][:, None]
        state = np.where(m, new, state)
        h[t] = np.where(m, new, 0)
    return h


def birnn_fwd(x, W_f, U_f, V_f, W_b, U_b, V_b, b_f, b_b, c, h0_f, h0_b, lengths):
    T, B, _ = x.shape
    H = W_f.shape[0]
    valid = valid_steps(lengths, T, B)
    h_f = _direction(x @ W_f.T, U_f, b_f, _zeros_or(h0_f, B, H, x.dtype), valid, False)
    h_b = _direction(x @ W_b.T, U_b, b_b, _zeros_or(h0_b, B, H, x.dtype), valid, True)
    y = h_f @ V_f.T + h_b @ V_b.T
    if c is not None:
        y += c
    y[~valid] = 0
    return y, h_f, h_b


def _starts(valid, reverse):
    """(T, B) bool: the step where each sequence's direction starts from h0 (t = 0
    forward; t = lengths[i] - 1 backward)."""
    first = np.zeros_like(valid)
    if reverse:
        first[:-1] = valid[:-1] & ~valid[1:]
        first[-1] = valid[-1]
    else:
        first[0] = True
    return first


def _previous(h, h0, first, reverse):
    """The state each step started from: h[t-1] (forward) or h[t+1] (backward), h0 at
    a start."""
    prev = np.empty_like(h)
    if reverse:
        prev[:-1], prev[-1] = h[1:], h0
    else:
        prev[1:], prev[0] = h[:-1], h0
    prev[first] = np.broadcast_to(h0, h.shape)[first]
    return prev


def _deltas(dh_out, h, U, valid, first, reverse):
    """The recursion dL/dh_t = dL_t/dh_t + (dh_next/dh_t)^T dL/dh_next, kept as the
    pre-activation gradients delta_t = dL/dh_t * (1 - h_t^2), since
    (dh_next/dh_t)^T g = U^T (g * (1 - h_next^2)).  Returns (delta, dL/dh0)."""
    T, B, H = h.shape
    delta = np.zeros_like(h)
    carry = np.zeros((B, H), h.dtype)       # U^T delta of the step after (in its order)
    dh0 = np.zeros((B, H), h.dtype)
    for t in (range(T) if reverse else range(T - 1, -1, -1)):
        d = np.where(valid[t][:, None], (dh_out[t] + carry) * (1 - h[t] * h[t]), 0)
        delta[t] = d
        carry = d @ U
        dh0[first[t]] = carry[first[t]]
    return delta, dh0


def birnn_bwd(dy, x, h_f, h_b, W_f, U_f, V_f, W_b, U_b, V_b, h0_f, h0_b, lengths, need_dx):
    T, B, I = x.shape
    H = W_f.shape[0]
    valid = valid_steps(lengths, T, B)
    dy = np.where(valid[:, :, None], dy, 0).astype(x.dtype)
    flat = (lambda a: a.reshape(T * B, -1))
    out = {}
    dx = np.zeros_like(x) if need_dx else None
    for tag, h, W, U, V, h0, rev in (("f", h_f, W_f, U_f, V_f, h0_f, False),
                                     ("b", h_b, W_b, U_b, V_b, h0_b, True)):
        h0 = _zeros_or(h0, B, H, x.dtype)
        first = _starts(valid, rev)
        delta, dh0 = _deltas(dy @ V, h, U, valid, first, rev)
        prev = _previous(h, h0, first, rev)
        out["dW_" + tag] = flat(delta).T @ flat(x)
        out["dU_" + tag] = flat(delta).T @ flat(prev)
        out["dV_" + tag] = flat(dy).T @ flat(h)
        out["db_" + tag] = delta.sum(axis=(0, 1))
        out["dh0_" + tag] = dh0
        if need_dx:
            dx += delta @ W
    dc = dy.sum(axis=(0, 1))
    return (out["dW_f"], out["dU_f"], out["dV_f"], out["db_f"], out["dW_b"], out["dU_b"],
            out["dV_b"], out["db_b"], dc, out["dh0_f"], out["dh0_b"], dx)
