"""Ancestral sampling with temperature, top-k, top-p (nucleus) and min-p filters."""
from __future__ import annotations

import time

import numpy as np

from fastdl._validate import check_real
from fastdl.decode import processors as P
from fastdl.decode._model import Model
from fastdl.decode.ops import log_softmax
from fastdl.decode.search import Hypothesis, SearchStats, _count, _load_backends, _shape, _start

__all__ = ["sample"]


def sample(lm, max_len, *, bos=None, eos=None, prompt=None, attention_mask=None, temperature=1.0,
           top_k=None, top_p=None, min_p=None, seed=None, num_samples=1,
           backend: str | None = None):
    """Draw ``num_samples`` sequences from the model (per prompt, for a batch of
    prompts), all rows advanced together.

    Each step samples from the model's distribution after temperature, then
    ``top_k`` (keep the k most likely; ties with the k-th stay, as in Hugging
    Face), ``top_p`` (keep the smallest set of most likely tokens whose mass
    reaches p), ``min_p`` (keep tokens with probability >= min_p × the top
    probability); these are Hugging Face's logits warpers.  ``seed``: int, None or a
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
    p = _start(bos, prompt, attention_mask)
    stats = SearchStats("sample", prompts=p.batch)
    model = Model(lm, bos, eos, stats)
    warp = dict(temperature=temperature, top_k=top_k, top_p=1.0 if top_p is None else top_p,
                min_p=min_p, backend=backend)
    total = p.batch * num_samples
    eos_set = np.array(model.eos, np.int64)
    # per step, the samples that drew a token and their tokens: memory follows the steps
    # taken (samples end at eos or dead ends), never max_len
    drawn: list[tuple[np.ndarray, np.ndarray]] = []
    length = np.zeros(total, np.int64)
    logp = np.zeros(total)
    live = np.arange(total)                             # the sample each model row belongs to
    model.start(p.repeat(num_samples))
    for t in range(1, max_len + 1):
        lp, m = model.step()
        rows, N = lp.shape
        stats.steps += 1
        stats.candidates_scored += rows * N
        go = np.flatnonzero(m > -np.inf)      # a row with no possible continuation ends here
        if go.size < rows:
            if t == 1:
                raise ValueError("step 1: the language model gives no continuation of the "
                                 "start (⟨BOS⟩ or the prompt) a finite log-probability")
            stats.dead_ends += rows - go.size
            if go.size == 0:
                break
            model.keep(go)
            lp, live, rows = lp[go], live[go], go.size
        dist = log_softmax(lp, backend=backend)     # renormalizes pruned rows too
        tok = P.draw(P.warp(dist, **warp), rng)
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
    stats.total_time_s = time.perf_counter() - start
    out = []
    for g in range(p.batch):
        mine = range(g * num_samples, (g + 1) * num_samples)
        order = sorted(mine, key=lambda i: -logp[i])         # stable: draw order on ties
        out.append([Hypothesis(tuple(flat[ends[i] - length[i]:ends[i]]), float(logp[i]),
                               float(logp[i]), stats) for i in order])
    return _shape(p, out)
