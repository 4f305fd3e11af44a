"""The decoding ops: top-k, log-softmax and the fused beam step.

Rows are C-contiguous float16/float32/float64 arrays; float16 is computed in
float32 and every op equals the float32 op on the exactly converted input
(backends read float16 directly; they may not convert by a copy).  Order
(``topk``, ``beam_topk``): descending by value; equal values by the lower
index (``beam_topk``: per group, the lower flat index ``b*N + j``); NaN ranks above every
number, as in ``torch.topk``.
"""
from __future__ import annotations

import numpy as np

from fastdl.ops._spec import Arg, OpSpec, Result, define

_ASSUME = "rows C-contiguous, aligned and non-empty; k within bounds; out exact"


def _rows():
    return Arg("x", dtype="float", shape=("R", "n"), nonempty=True, packed=True)


def _logits(rng, dtype, tiny):
    R = 1 if tiny else int(rng.choice([1, 2, 3, 7]))
    n = 1 if tiny else int(rng.choice([1, 2, 5, 8, 17, 33, 100]))
    return (rng.standard_normal((R, n)) * 3).astype(dtype)


def _s_topk(rng, dtype, tiny=False):
    x = _logits(rng, dtype, tiny)
    return x, int(rng.integers(1, x.shape[1] + 1))


def _s_log_softmax(rng, dtype, tiny=False):
    return _logits(rng, dtype, tiny), None


def _s_beam_topk(rng, dtype, tiny=False):
    G = 1 if tiny else int(rng.choice([1, 2, 3]))
    B, N = _logits(rng, dtype, tiny).shape
    lp = (rng.standard_normal((G, B, N)) * 3).astype(dtype)
    sd = np.float32 if np.dtype(dtype) == np.float16 else dtype
    scores = (rng.standard_normal((G, B)) - 2).astype(sd)
    return lp, scores, int(rng.integers(1, min(B * N, 2 * B) + 1)), bool(rng.random() < 0.5)


topk = define(OpSpec(
    "topk", area="decode",
    args=(_rows(), Arg("k", kind="int", low=1, high="n")),
    results=(Result("values", "like:x", ("R", "k")), Result("indices", "int64", ("R", "k"),
                                                            exact=True)),
    doc="the k largest values of each row and their indices", assume=_ASSUME, sample=_s_topk))

log_softmax = define(OpSpec(
    "log_softmax", area="decode",
    args=(_rows(), Arg("out", dtype="like:x", shape=("R", "n"), optional=True, out=True,
                         inplace="x")),
    results=(Result("out", "like:x", "x"),),
    doc="(x - m) - log(sum(exp(x - m))) per row, m the row maximum (the log-sum computed in "
        "float64); a row without a finite maximum becomes NaN",
    assume=_ASSUME, sample=_s_log_softmax))

beam_topk = define(OpSpec(
    "beam_topk", area="decode",
    args=(Arg("log_probs", dtype="float", shape=("G", "B", "N"), nonempty=True, packed=True),
          Arg("beam_scores", dtype="compute:log_probs", shape=("G", "B"), packed=True),
          Arg("k", kind="int", low=1, high="B*N"), Arg("normalize", kind="flag")),
    results=(Result("scores", "compute:log_probs", ("G", "k")),
             Result("beam", "int64", ("G", "k"), exact=True),
             Result("token", "int64", ("G", "k"), exact=True)),
    doc="per group g, the k best (beam, token) continuations of its B beams by beam score + "
        "log-prob (normalize: log-softmax the rows first), without storing the B x N scores; "
        "beam indices are local to the group",
    assume=_ASSUME, sample=_s_beam_topk))

DECODE_OPS = (topk, log_softmax, beam_topk)
