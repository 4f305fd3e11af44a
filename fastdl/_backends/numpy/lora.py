"""NumPy reference of the LoRA and attention ops (see ``fastdl.ops.lora``)."""
from __future__ import annotations

import numpy as np


def lora_fwd(x, w, a, b, bias, mask, scale):
    xd = x if mask is None else x * mask
    xa = xd @ a
    y = (xa * x.dtype.type(scale)) @ b.T           # (x A) first: A Bᵀ is never formed
    if w is not None:
        y += x @ w
    if bias is not None:
        y += bias
    return y, xa


def lora_bwd(dy, x, xa, w, a, b, mask, scale, need_dx):
    s = dy.dtype.type(scale)
    g = (dy @ b) * s
    db = (dy.T @ xa) * s
    da = (x if mask is None else x * mask).T @ g
    if not need_dx:
        return da, db, None
    dx = g @ a.T
    if mask is not None:
        dx *= mask
    if w is not None:
        dx += dy @ w.T
    return da, db, dx


def _causal(n: int) -> np.ndarray:
    return np.triu(np.ones((n, n), bool), 1)        # True above the diagonal: masked


def attention_fwd(q, k, v, scale, causal):
    s = np.matmul(q, k.transpose(0, 2, 1)) * q.dtype.type(scale)
    if causal:
        s[:, _causal(q.shape[1])] = -np.inf
    s -= s.max(axis=2, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=2, keepdims=True)
    return np.matmul(p, v), p


def attention_bwd(do, q, k, v, p, scale):
    dv = np.matmul(p.transpose(0, 2, 1), do)
    dp = np.matmul(do, v.transpose(0, 2, 1))
    ds = p * (dp - (dp * p).sum(axis=2, keepdims=True))   # softmax backward, row by row
    ds *= q.dtype.type(scale)
    return np.matmul(ds, k), np.matmul(ds.transpose(0, 2, 1), q), dv
