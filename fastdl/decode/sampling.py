"""Ancestral sampling with temperature, top-k, top-p (nucleus) and min-p filters."""
from __future__ import annotations

import time

import numpy as np

from fastdl._validate import check_real
from fastdl.decode.lm import Model
from fastdl.decode.ops import log_softmax, topk
from fastdl.decode.search import Hypothesis, SearchStats, _count, _load_backends

__all__ = ["sample"]


def _filter(dist: np.ndarray, temperature, top_k, top_p, min_p, backend) -> np.ndarray:
    """Log-probabilities (rows, N) of the filtered, tempered version of ``dist`` (the
    model's normalized log-probabilities); excluded tokens are -inf.  Order as in
    Hugging Face: temperature, top-k, top-p, min-p.  Every row has a finite maximum
    (dead rows were dropped before)."""
    x = dist
    if temperature != 1.0:            # shift first, in float64: tiny temperatures must not overflow
        with np.errstate(over="ignore", divide="ignore"):
            x = (dist - dist.max(axis=1, keepdims=True)).astype(np.float64) / temperature
        x = log_softmax(x, backend=backend)
    rows, N = x.shape
    if top_k is not None and top_k < N:
        _, keep = topk(x, top_k, backend=backend)         # ties: the lower ids stay
        mask = np.full(x.shape, -np.inf, x.dtype)
        np.put_along_axis(mask, keep, 0.0, axis=1)
        x = log_softmax(x + mask, backend=backend)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-x, axis=1, kind="stable")
        p = np.exp(np.take_along_axis(x, order, axis=1).astype(np.float64))
        before = np.cumsum(p, axis=1) - p                  # mass of the better tokens
        drop = before >= top_p                             # the best token always stays
        mask = np.zeros(x.shape, bool)
        np.put_along_axis(mask, order, drop, axis=1)
        x = log_softmax(np.where(mask, -np.inf, x), backend=backend)
    if min_p is not None and min_p > 0.0:
        cut = x.max(axis=1, keepdims=True) + np.log(min_p)
        x = log_softmax(np.where(x < cut, -np.inf, x), backend=backend)
    return x


def sample(lm, max_len, *, bos, eos=None, temperature=1.0, top_k=None, top_p=None, min_p=None,
           seed=None, num_samples=1, backend: str | None = None):
    """Draw ``num_samples`` sequences from the model, all rows advanced together.

    Each step samples from the model's distribution after temperature, then
    ``top_k`` (keep the k most likely), ``top_p`` (keep the smallest set of
    most likely tokens whose mass reaches p), ``min_p`` (keep tokens with
    probability >= min_p × the top probability).  ``seed``: int, None or a
    ``numpy.random.Generator``; the same seed gives the same samples.
    ``log_prob`` of a hypothesis is under the unfiltered model; results are
    sorted best first (stable: equal samples keep their draw order).  A sample
    whose every continuation has probability 0 (a pruned ``TreeLM`` path) ends
    early; ``stats.dead_ends`` counts them.
    """
    _load_backends(("log_softmax", "topk"), backend)
    start = time.perf_counter()
    max_len = _count(max_len, "max_len", minimum=1)
    num_samples = _count(num_samples, "num_samples", minimum=1)
    temperature = check_real(temperature, "temperature")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None:
        top_k = _count(top_k, "top_k", minimum=1)
    if top_p is not None:
        top_p = check_real(top_p, "top_p")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None:
        min_p = check_real(min_p, "min_p", low=0.0, high=1.0)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    stats = SearchStats("sample")
    model = Model(lm, bos, eos, stats)
    eos_set = np.array(model.eos, np.int64)
    # per step, the samples that drew a token and their tokens: memory follows the steps
    # taken (samples end at eos or dead ends), never max_len
    drawn: list[tuple[np.ndarray, np.ndarray]] = []
    length = np.zeros(num_samples, np.int64)
    logp = np.zeros(num_samples)
    live = np.arange(num_samples)                       # the sample each model row belongs to
    model.start(num_samples)
    for t in range(1, max_len + 1):
        lp, m = model.step()
        rows, N = lp.shape
        stats.steps += 1
        stats.candidates_scored += rows * N
        go = np.flatnonzero(m > -np.inf)      # a row with no possible continuation ends here
        if go.size < rows:
            if t == 1:
                raise ValueError("step 1: the language model gives no continuation of ⟨BOS⟩ a "
                                 "finite log-probability")
            stats.dead_ends += rows - go.size
            if go.size == 0:
                break
            model.keep(go)
            lp, live, rows = lp[go], live[go], go.size
        dist = log_softmax(lp, backend=backend)     # renormalizes pruned rows too
        q = _filter(dist, temperature, top_k, top_p, min_p, backend)
        cdf = np.cumsum(np.exp(q.astype(np.float64)), axis=1)
        u = rng.random(rows) * cdf[:, -1]
        tok = np.minimum((cdf <= u[:, None]).sum(axis=1), N - 1)   # first index with cdf > u
        true_lp = lp if model.normalized else dist
        logp[live] += true_lp[np.arange(rows), tok]
        drawn.append((live, tok))
        length[live] = t
        stats.hypothesis_tokens += rows
        cont = np.flatnonzero(~np.isin(tok, eos_set))
        if cont.size == 0 or t == max_len:
            break
        model.advance(cont, tok[cont])
        live = live[cont]
    # each sample's tokens, in step order (a stable sort by sample keeps it), end to end
    owner = np.concatenate([r for r, _ in drawn])
    flat = np.concatenate([k for _, k in drawn])[np.argsort(owner, kind="stable")].tolist()
    ends = np.cumsum(length).tolist()
    order = sorted(range(num_samples), key=lambda i: -logp[i])     # stable: draw order on ties
    stats.total_time_s = time.perf_counter() - start
    return [Hypothesis(tuple(flat[ends[i] - length[i]:ends[i]]), float(logp[i]), float(logp[i]),
                       stats) for i in order]
