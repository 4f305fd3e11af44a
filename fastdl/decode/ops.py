"""Decoding kernels: top-k, log-softmax and the fused beam step.

The public functions validate, move the reduced axis last, make the data a
C-contiguous 2-D array and call one op; the ops' arguments and results are
declared in ``fastdl.ops.decode`` (``print(fastdl.ops.table("decode"))``).

float16 is computed in float32 and every op equals the float32 op on the
exactly converted input: ``topk`` returns float16 values (elements of x),
``log_softmax`` rounds the float32 result once to float16 (nearest, ties to
even), ``beam_topk`` returns float32 scores (the accumulation type of beam
scores).  Backends read float16 directly; they may not convert by a copy.

Order (``topk`` and ``beam_topk``): descending by value; equal values by the
lower index (``beam_topk``: the lower flat index ``b*N + j``); NaN ranks above
every number (as in ``torch.topk``), NaNs among themselves by index.

``log_softmax`` of a row: ``(x - m) - l`` in the dtype (float16: in float32,
then rounded once to float16), ``m`` the row maximum
and ``l = log(sum(exp(x - m)))`` computed in float64 and rounded once to the
dtype (as PyTorch: no cancellation when the logits are large); a row without a
finite maximum (all -inf, or holding +inf or NaN) becomes all NaN, as in
PyTorch.

``beam_topk`` candidate ``(b, j)`` scores ``(log_probs[b, j] - m[b]) + add[b]``
in the dtype (float32 for float16 log-probs), where ``add[b] = beam_scores[b] - l[b]`` (computed in float64,
rounded once) when normalizing; without normalizing ``m[b] = 0`` and ``add[b]
= beam_scores[b]``.  A row whose log-probs are all -inf has no candidates worth
anything: its scores are -inf (not NaN).  The B×N score matrix is never stored.
A 3-D ``log_probs`` (G, B, N) with ``beam_scores`` (G, B) is G such steps in one
call (the op always takes groups; a 2-D call is G = 1): each group's top-k is
its own, beam indices local to the group, bitwise the group's 2-D call.
"""
from __future__ import annotations

import numpy as np

from fastdl import ops as _ops
from fastdl._validate import as_float_array, check_flag, check_int, check_out, compute_dtype

__all__ = ["topk", "log_softmax", "beam_topk", "DECODE_OPS"]

DECODE_OPS = tuple(op.name for op in _ops.DECODE_OPS)


def _float_input(x, name: str) -> np.ndarray:
    """A plain float16/float32/float64 ndarray: float16 stays float16 (the kernels read it
    and compute in float32); other inputs as ``as_float_array`` converts them."""
    arr = x if isinstance(x, np.ndarray) else None
    if arr is None and isinstance(x, np.generic):
        arr = np.asarray(x)
    if arr is not None and arr.dtype.kind == "f" and arr.dtype.itemsize == 2:
        return np.asarray(arr, np.float16)          # plain ndarray, native byte order
    return as_float_array(x, name)


def _axis(axis, ndim: int, name: str = "axis") -> int:
    axis = check_int(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {axis}")
    return axis % ndim


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """(R, n) C-contiguous array with the ``axis`` of x last."""
    moved = np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(moved).reshape(-1, x.shape[axis])


def topk(x, k, axis=-1, *, backend: str | None = None):
    """The ``k`` largest entries of ``x`` along ``axis``: ``(values, indices)``.

    Sorted descending; equal values come in index order; NaN ranks above every
    number.  ``indices`` are int64.  float16/float32/float64 keep their dtype
    (float16 is compared as the float32 it converts to exactly); integer and
    bool inputs are computed in float64 (integers above 2^53 lose their order).  A heap of size k behind a SIMD
    threshold compare (Cython backend): O(n log k), most elements cost one
    compare.
    """
    x = _float_input(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    axis = _axis(axis, x.ndim)
    n = x.shape[axis]
    k = check_int(k, "k", minimum=1)
    if k > n:
        raise ValueError(f"k must be <= the size of axis {axis} ({n}), got k={k}")
    out_shape = x.shape[:axis] + x.shape[axis + 1:] + (k,)
    if x.size == 0:            # other axes empty: nothing to select from, nothing to return
        vals, idx = np.empty(out_shape, x.dtype), np.empty(out_shape, np.int64)
    else:
        vals, idx = _ops.topk(_rows(x, axis), k, backend=backend)
        vals, idx = vals.reshape(out_shape), idx.reshape(out_shape)
    return np.moveaxis(vals, -1, axis), np.moveaxis(idx, -1, axis)


def log_softmax(x, axis=-1, *, out=None, backend: str | None = None):
    """``x - logsumexp(x, axis)``, in one max/log-sum-exp pass and one write per row.

    float16/float32/float64 keep their dtype (the log-sum-exp is accumulated in
    float64); float16 is computed in float32 and the result rounded once to
    float16, as PyTorch keeps float16; integers and bool are computed in
    float64.  A slice with no finite maximum becomes NaN, as in PyTorch.
    ``out``: an array of x's shape and of that result dtype, not overlapping x.
    """
    x = _float_input(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    axis = _axis(axis, x.ndim)
    out = check_out(out, "out", x.shape, x.dtype, inputs=(x,))
    if x.size == 0:
        return np.empty(x.shape, x.dtype) if out is None else out
    rows = _rows(x, axis)
    # the op writes a C-contiguous (R, n) buffer: out itself when its layout allows
    direct = None
    if out is not None:
        view = np.moveaxis(out, axis, -1)
        if view.flags.c_contiguous:
            direct = view.reshape(rows.shape)
    res = _ops.log_softmax(rows, direct, backend=backend)
    res = np.moveaxis(res.reshape(np.moveaxis(x, axis, -1).shape), -1, axis)
    if out is None:
        return res
    if direct is None:
        out[...] = res
    return out


def beam_topk(log_probs, beam_scores, k, *, normalize: bool = True, backend: str | None = None):
    """One fused beam-search step: the best ``k`` of all B×N candidates.

    Candidate ``(b, j)`` scores ``beam_scores[b] + log_softmax(log_probs[b])[j]``
    (``normalize=False``: ``log_probs[b, j]`` as given).  Returns ``(scores,
    beam_idx, token_idx)``, best first, ties by the lower flat index
    ``b*N + j``.  Rows are normalized, offset and filtered in one pass each
    without storing the B×N score matrix.  ``log_probs`` (B, N) float32/float64:
    ``beam_scores`` (B,) is cast to its dtype, the scores have it; float16
    ``log_probs`` are computed in float32: ``beam_scores`` is cast to float32 and
    the scores are float32 (beam scores accumulate over steps; float16 would
    lose them).

    Batched: ``log_probs`` (G, B, N) with ``beam_scores`` (G, B) runs G
    independent beam steps (G prompts of B beams each) in one call and returns
    ``(G, k)`` arrays; row g is exactly the 2-D call on ``log_probs[g],
    beam_scores[g]`` (``beam_idx`` local to the group, 0..B-1).
    """
    lp = _float_input(log_probs, "log_probs")
    if lp.ndim not in (2, 3):
        raise ValueError("log_probs must be 2-D (beams, vocabulary) or 3-D (groups, beams, "
                         f"vocabulary), got shape {lp.shape}")
    batched = lp.ndim == 3
    G, B, N = lp.shape if batched else (1,) + lp.shape
    s = as_float_array(beam_scores, "beam_scores")
    want = (G, B) if batched else (B,)
    if s.shape != want:
        what = ("one score per (group, beam) row of a 3-D log_probs" if batched
                else "one score per row of log_probs")
        raise ValueError(f"beam_scores must have shape {want} ({what}), got {s.shape}")
    sdt = compute_dtype(lp.dtype)
    if s.dtype != sdt or not (s.flags.c_contiguous and s.flags.aligned):
        with np.errstate(over="ignore"):         # an overflowing cast is the +inf refused below
            s = np.require(s, sdt, ("C", "A"))
    if not (s < np.inf).all():              # NaN and +inf (also after the cast) fail this
        raise ValueError(f"beam_scores must be finite or -inf in {np.dtype(sdt)}, "
                         "got NaN or +inf")
    k = check_int(k, "k", minimum=1)
    if k > B * N:
        raise ValueError(f"k must be <= the number of candidates per group B*N = {B * N}, "
                         f"got k={k}")
    normalize = check_flag(normalize, "normalize")
    if G == 0:                 # no groups: nothing to select from, nothing to return
        return np.empty((0, k), sdt), np.empty((0, k), np.int64), np.empty((0, k), np.int64)
    lp = np.require(lp, None, ("C", "A")).reshape(G, B, N)    # the kernels read it packed
    res = _ops.beam_topk(lp, s.reshape(G, B), k, normalize, backend=backend)
    return res if batched else tuple(r[0] for r in res)
