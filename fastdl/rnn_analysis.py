"""The quantities of backpropagation through time, one by one.

Time indices follow the equations of ``fastdl.rnn``: the steps are t = 1..T,
h_0^(f) and h_{T+1}^(b) are the initial states; arrays hold step t at index
t - 1.  With the sum-of-squares loss L = Σ_t L_t, L_t = ||z_t - y_t||²:

* ``hidden_loss_grads``: ∇_{h_t} L_t = -2 Vᵀ (z_t - y_t) per direction (the
  gradient through y_t only);
* ``jacobian_forward(cache, t)`` = ∂h_{t+1}^(f)/∂h_t^(f) = diag(1 - (h_{t+1}^(f))²) U^(f)
  and ``jacobian_backward(cache, t)`` = ∂h_{t-1}^(b)/∂h_t^(b) = diag(1 - (h_{t-1}^(b))²) U^(b);
* ``bptt_terms``: the recursion ∇_{h_t^(f)} L = ∇_{h_t^(f)} L_t + (∂h_{t+1}^(f)/∂h_t^(f))ᵀ
  ∇_{h_{t+1}^(f)} L (and its mirror) with the Jacobians as explicit matrices, and
  every weight gradient as the sum over steps, e.g.
  ∇W^(b) = Σ_t diag(1 - (h_t^(b))²) ∇_{h_t^(b)} L x_tᵀ and
  ∇U^(f) = Σ_t diag(1 - (h_t^(f))²) ∇_{h_t^(f)} L (h_{t-1}^(f))ᵀ.
  It is the slow, literal form of ``birnn_backward`` (which never builds a
  Jacobian) and is tested equal to it;
* ``gradient_flow``: ||∇_{h_t} L|| per step and the spectral norm of products of
  k Jacobians, k = 1..T: vanishing and exploding gradients as numbers.

Batched caches give one matrix per sequence ((B, H, H) Jacobians).  For a padded
batch sequence i uses its own steps 1..n_i (h_{n_i+1}^(b) is its initial state);
a Jacobian outside them is 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastdl._gradcheck import GradcheckError, GradcheckResult, gradcheck
from fastdl.rnn import BiRNNCache
from fastdl.rnn_graph import DotGraph, render, unrolled_graph

__all__ = ["hidden_loss_grads", "jacobian_forward", "jacobian_backward", "bptt_terms",
           "GradientFlow", "gradient_flow", "gradcheck", "GradcheckResult", "GradcheckError",
           "unrolled_graph", "render", "DotGraph"]


def _cache(cache) -> BiRNNCache:
    if not isinstance(cache, BiRNNCache):
        raise TypeError(f"cache must be the BiRNNCache of birnn_forward, got "
                        f"{type(cache).__name__}")
    return cache


def _lengths(cache) -> np.ndarray:
    return np.full(cache.B, cache.T) if cache.lengths is None else cache.lengths


def _step(t, name, low, high, T):
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
        raise TypeError(f"t must be an int, got {t!r} ({type(t).__name__})")
    if not low <= t <= high:
        raise ValueError(f"t must be in [{low}, {high}] for {name} of a forward with T={T} "
                         f"steps, got {t}")
    return int(t)


def _one(cache, a):
    """(B, ...) -> (...) for a one-sequence forward."""
    return a[0] if cache.unbatched else a


def jacobian_forward(cache, t: int) -> np.ndarray:
    """∂h_{t+1}^(f)/∂h_t^(f) = diag(1 - (h_{t+1}^(f))²) U^(f), t = 0..T-1 (t = 0: the
    derivative with respect to the initial state).  (H, H), or (B, H, H) for a batch."""
    c = _cache(cache)
    t = _step(t, "jacobian_forward", 0, c.T - 1, c.T)
    h = c.h_f[t].astype(np.float64)                       # h_{t+1}, (B, H)
    J = (1 - h * h)[:, :, None] * c.params.U_f.astype(np.float64)[None]
    J[t >= _lengths(c)] = 0
    return _one(c, J)


def jacobian_backward(cache, t: int) -> np.ndarray:
    """∂h_{t-1}^(b)/∂h_t^(b) = diag(1 - (h_{t-1}^(b))²) U^(b), t = 2..T+1 (t = T+1: the
    derivative with respect to the initial state).  (H, H), or (B, H, H) for a batch."""
    c = _cache(cache)
    t = _step(t, "jacobian_backward", 2, c.T + 1, c.T)
    h = c.h_b[t - 2].astype(np.float64)                   # h_{t-1}, (B, H)
    J = (1 - h * h)[:, :, None] * c.params.U_b.astype(np.float64)[None]
    J[t - 2 >= _lengths(c)] = 0
    return _one(c, J)


def _dy(cache, dy=None, z=None):
    if (dy is None) == (z is None):
        raise TypeError("give exactly one of z (the targets of the sum-of-squares loss) and "
                        "dy (dL/dy)")
    p = cache.params
    if z is not None:
        zt = cache.from_caller(z, "z", p.d_out).astype(np.float64)
        d = -2 * (zt - cache.y)
    else:
        d = cache.from_caller(dy, "dy", p.d_out).astype(np.float64)
    d[~cache.valid()] = 0
    return d


def hidden_loss_grads(cache, z=None, *, dy=None):
    """(∇_{h_t^(f)} L_t, ∇_{h_t^(b)} L_t) for t = 1..T, time-major (T, B, H) float64
    (or (T, H)): -2 V^(f)ᵀ (z_t - y_t) and -2 V^(b)ᵀ (z_t - y_t) for targets ``z``,
    or Vᵀ dy_t for a given dL/dy.  0 at padded steps."""
    c = _cache(cache)
    d = _dy(c, dy, z)
    p = c.params
    g_f = d @ p.V_f.astype(np.float64)
    g_b = d @ p.V_b.astype(np.float64)
    return (g_f[:, 0], g_b[:, 0]) if c.unbatched else (g_f, g_b)


def bptt_terms(cache, z=None, *, dy=None) -> dict:
    """The gradients by the recursion with explicit Jacobians and sums over steps, in
    float64: ``{"local_f", "local_b"}`` (∇_{h_t} L_t), ``{"total_f", "total_b"}``
    (∇_{h_t} L), time-major (T, B, H); and the parameter gradients ``W_f, U_f, V_f,
    W_b, U_b, V_b`` (and ``b_f, b_b, c`` when the model has biases)."""
    c = _cache(cache)
    d = _dy(c, dy, z)
    p = c.params
    T, B = c.T, c.B
    loc_f = d @ p.V_f.astype(np.float64)
    loc_b = d @ p.V_b.astype(np.float64)
    lens = _lengths(c)
    batched = (lambda J: J if not c.unbatched else J[None])
    tot_f = np.zeros_like(loc_f)
    tot_b = np.zeros_like(loc_b)
    for t in range(T, 0, -1):                          # step t at index t-1
        tot_f[t - 1] = loc_f[t - 1]
        if t < T:                                      # + (∂h_{t+1}/∂h_t)ᵀ ∇_{h_{t+1}} L
            J = batched(jacobian_forward(c, t))
            tot_f[t - 1] += np.einsum("bij,bi->bj", J, tot_f[t])
    for t in range(1, T + 1):
        tot_b[t - 1] = loc_b[t - 1]
        if t > 1:                                      # + (∂h_{t-1}/∂h_t)ᵀ ∇_{h_{t-1}} L
            J = batched(jacobian_backward(c, t))
            tot_b[t - 1] += np.einsum("bij,bi->bj", J, tot_b[t - 2])
    valid = c.valid()
    tot_f[~valid] = 0
    tot_b[~valid] = 0
    x = c.x.astype(np.float64)
    hf, hb = c.h_f.astype(np.float64), c.h_b.astype(np.float64)
    h0f = np.zeros((B, p.hidden)) if c.h0_f is None else c.h0_f.astype(np.float64)
    h0b = np.zeros((B, p.hidden)) if c.h0_b is None else c.h0_b.astype(np.float64)
    out = {"local_f": loc_f, "local_b": loc_b, "total_f": tot_f, "total_b": tot_b}
    grads = {k: 0.0 for k in ("W_f", "U_f", "V_f", "W_b", "U_b", "V_b", "b_f", "b_b", "c")}
    for t in range(1, T + 1):
        i = t - 1
        e_f = (1 - hf[i] ** 2) * tot_f[i]              # diag(1 - h_t²) ∇_{h_t} L, per sequence
        e_b = (1 - hb[i] ** 2) * tot_b[i]
        prev_f = hf[i - 1] if t > 1 else h0f           # h_{t-1}^(f)
        # h_{t+1}^(b): the next step's state, or h0 at each sequence's last step
        prev_b = np.where((t >= lens)[:, None], h0b, hb[min(i + 1, T - 1)])
        grads["W_f"] = grads["W_f"] + e_f.T @ x[i]
        grads["U_f"] = grads["U_f"] + e_f.T @ prev_f
        grads["W_b"] = grads["W_b"] + e_b.T @ x[i]
        grads["U_b"] = grads["U_b"] + e_b.T @ prev_b
        grads["V_f"] = grads["V_f"] + d[i].T @ hf[i]
        grads["V_b"] = grads["V_b"] + d[i].T @ hb[i]
        grads["b_f"] = grads["b_f"] + e_f.sum(0)
        grads["b_b"] = grads["b_b"] + e_b.sum(0)
        grads["c"] = grads["c"] + d[i].sum(0)
    if not p.bias:
        for k in ("b_f", "b_b", "c"):
            del grads[k]
    out.update(grads)
    return out


@dataclass
class GradientFlow:
    """How gradients travel through time, per sequence (arrays (B, T); (T,) for one
    sequence; NaN past a sequence's length).

    grad_norm_f[t-1] = ||∇_{h_t^(f)} L||, grad_norm_b likewise; jacobian_norm_f[k-1] =
    ||∂h_n^(f)/∂h_{n-k}^(f)||₂, the spectral norm of the product of the k Jacobians
    from the last step n back (k = n reaches h_0^(f)); jacobian_norm_b[k-1] =
    ||∂h_1^(b)/∂h_{1+k}^(b)||₂.  Norms that shrink geometrically with k are
    vanishing gradients, norms that grow are exploding ones.
    """

    grad_norm_f: np.ndarray
    grad_norm_b: np.ndarray
    jacobian_norm_f: np.ndarray
    jacobian_norm_b: np.ndarray

    def rate(self, direction: str = "f") -> float:
        """Geometric mean factor per step of the Jacobian-product norm (first sequence):
        below 1 the gradient vanishes, above 1 it explodes."""
        n = self.jacobian_norm_f if direction == "f" else self.jacobian_norm_b
        n = n if n.ndim == 1 else n[0]
        n = n[np.isfinite(n) & (n > 0)]
        if len(n) < 2:
            return float("nan")
        return float(np.exp((np.log(n[-1]) - np.log(n[0])) / (len(n) - 1)))

    def plot(self, path) -> str:
        """A PNG (or any matplotlib format by suffix) of both panels (first sequence);
        needs matplotlib (the optional extra ``fastdl[plot]``)."""
        from fastdl._plot import gradient_flow_figure
        return gradient_flow_figure(self, path)


def _products(Js, n):
    """Spectral norms of J_1, J_1 J_2, ... (float64, with overflow to inf kept)."""
    out = np.full(len(Js), np.nan)
    P = np.eye(Js[0].shape[0]) if len(Js) else None
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(n):
            P = P @ Js[k]
            out[k] = np.linalg.norm(P, 2) if np.isfinite(P).all() else np.inf
    return out


def gradient_flow(cache, z=None, *, dy=None) -> GradientFlow:
    """Gradient norms per step and Jacobian-product norms (see ``GradientFlow``)."""
    c = _cache(cache)
    terms = bptt_terms(c, z, dy=dy)
    T, B = c.T, c.B
    lens = _lengths(c)
    gf = np.linalg.norm(terms["total_f"], axis=2).T       # (B, T)
    gb = np.linalg.norm(terms["total_b"], axis=2).T
    jf = np.full((B, T), np.nan)
    jb = np.full((B, T), np.nan)
    for i in range(B):
        n = int(lens[i])
        gf[i, n:] = np.nan
        gb[i, n:] = np.nan
        hf = c.h_f[:n, i].astype(np.float64)
        hb = c.h_b[:n, i].astype(np.float64)
        Uf, Ub = c.params.U_f.astype(np.float64), c.params.U_b.astype(np.float64)
        # ∂h_n/∂h_{n-k} = J(n-1) ... J(n-k), J(s) = ∂h_{s+1}/∂h_s = diag(1 - h_{s+1}²) U
        Jf = [(1 - hf[s] ** 2)[:, None] * Uf for s in range(n - 1, -1, -1)]
        # ∂h_1/∂h_{1+k} = J(2) ... J(k+1), J(s) = ∂h_{s-1}/∂h_s = diag(1 - h_{s-1}²) U
        Jb = [(1 - hb[s - 2] ** 2)[:, None] * Ub for s in range(2, n + 2)]
        jf[i, :n] = _products(Jf, n)
        jb[i, :n] = _products(Jb, n)
    if c.unbatched:
        gf, gb, jf, jb = gf[0], gb[0], jf[0], jb[0]
    return GradientFlow(gf, gb, jf, jb)
