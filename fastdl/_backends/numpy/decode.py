"""NumPy reference of the decoding ops (contracts in fastdl/decode/ops.py).

``topk`` is ``np.argpartition`` + a sort of the k survivors, made exact for
ties and NaN; ``beam_topk`` materialises the B×N scores (the Cython kernel
does not).
"""
import numpy as np


def _row_topk(row: np.ndarray, k: int):
    """Exact top-k of one row: NaN first (by index), then by value, ties by index."""
    nan = np.isnan(row)
    nan_idx = np.flatnonzero(nan)
    if nan_idx.size >= k:
        idx = nan_idx[:k]
    else:
        rest = np.flatnonzero(~nan)
        vals = row[rest]
        m = k - nan_idx.size
        kth = np.partition(vals, vals.size - m)[vals.size - m]   # m-th largest value
        cand = rest[vals >= kth]                                 # every tie of it, in index order
        order = np.lexsort((cand, -row[cand]))[:m]
        idx = np.concatenate([nan_idx, cand[order]])
    return row[idx], idx


def topk(x, k):
    R, n = x.shape
    part = np.argpartition(x, n - k, axis=1)[:, n - k:]          # the k largest, ties arbitrary
    vals = np.take_along_axis(x, part, axis=1)
    kth = vals.min(axis=1)
    # exact rows: no NaN and no tie of the k-th value left outside the k
    exact = (np.count_nonzero(x >= kth[:, None], axis=1) == k) & ~np.isnan(x).any(axis=1)
    order = np.lexsort((part, -vals), axis=-1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64, copy=False)
    out_vals = np.take_along_axis(vals, order, axis=1)
    for r in np.flatnonzero(~exact):
        out_vals[r], idx[r] = _row_topk(x[r], k)
    return out_vals, idx


def _offsets(x: np.ndarray) -> np.ndarray:
    """float64 log-sum-exp per row; NaN where the row has no finite maximum."""
    m = x.max(axis=1).astype(np.float64)
    ok = np.isfinite(m)
    safe = np.where(ok, m, 0.0)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lse = safe + np.log(np.exp(x.astype(np.float64) - safe[:, None]).sum(axis=1))
    return np.where(ok, lse, np.nan)


def log_softmax(x, out):
    off = _offsets(x).astype(x.dtype)
    if out is None:
        out = np.empty_like(x)
    np.subtract(x, off[:, None], out=out)
    return out


def beam_topk(log_probs, beam_scores, k, normalize):
    B, N = log_probs.shape
    if normalize:
        off = _offsets(log_probs)
        dead = np.all(log_probs == -np.inf, axis=1)
        with np.errstate(invalid="ignore"):
            add = beam_scores.astype(np.float64) - off
        add[dead] = -np.inf
        add = add.astype(log_probs.dtype)
    else:
        add = beam_scores
    with np.errstate(invalid="ignore"):
        scores = log_probs + add[:, None]
    vals, flat = topk(scores.reshape(1, -1), k)
    flat = flat[0]
    return vals[0], flat // N, flat % N
