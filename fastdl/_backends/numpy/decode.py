"""NumPy reference of the decoding ops (contracts in fastdl/decode/ops.py).

``topk`` is ``np.argpartition`` + a sort of the k survivors, made exact for
ties and NaN; ``beam_topk`` materialises each group's B×N scores (the Cython kernel
does not).  float16 is computed in float32 through a converted copy (the
readable reference; the Cython kernels convert while they read).
"""
import numpy as np

_HALF = np.dtype(np.float16)


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
    if x.dtype == _HALF:         # float16 -> float32 is exact: same order, same elements
        vals, idx = topk(x.astype(np.float32), k)
        return vals.astype(np.float16), idx
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


def _lse(x: np.ndarray):
    """Row max (dtype) and float64 log(sum(exp(x - max))); the log is NaN where
    the row has no finite maximum (all -inf, or NaN / +inf present)."""
    m = x.max(axis=1)
    ok = np.isfinite(m)
    safe = np.where(ok, m, 0).astype(x.dtype)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        lse = np.log(np.exp(x.astype(np.float64) - safe[:, None].astype(np.float64)).sum(axis=1))
    return m, np.where(ok, lse, np.nan)


def log_softmax(x, out):
    if x.dtype == _HALF:         # computed in float32, rounded once to float16
        res = log_softmax(x.astype(np.float32), None).astype(np.float16)
        if out is None:
            return res
        out[...] = res
        return out
    m, lse = _lse(x)
    m = np.where(np.isnan(lse), np.nan, m).astype(x.dtype)
    if out is None:
        out = np.empty_like(x)
    with np.errstate(invalid="ignore", over="ignore"):
        np.subtract(x, m[:, None], out=out)
        np.subtract(out, lse.astype(x.dtype)[:, None], out=out)
    return out


def beam_topk(log_probs, beam_scores, k, normalize):
    """Per group g of (G, B, N) log-probs: the top-k of the B*N candidates,
    the beam index local to the group."""
    if log_probs.dtype == _HALF:     # computed in float32; beam_scores are float32
        log_probs = log_probs.astype(np.float32)
    G, B, N = log_probs.shape
    rows = log_probs.reshape(G * B, N)
    sub = np.zeros(G * B, rows.dtype)
    if normalize:
        m, lse = _lse(rows)
        with np.errstate(invalid="ignore"):
            add = beam_scores.reshape(-1).astype(np.float64) - lse
        add[np.isnan(lse) & (m == -np.inf)] = -np.inf      # all -inf: no candidate
        ok = ~np.isnan(lse)
        sub[ok] = m[ok]
        add = add.astype(rows.dtype)
    else:
        add = beam_scores.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        scores = (rows - sub[:, None]) + add[:, None]
    vals, flat = topk(scores.reshape(G, B * N), k)       # one row of candidates per group
    return vals, flat // N, flat % N
