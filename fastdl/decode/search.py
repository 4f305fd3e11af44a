"""Searches over a language model: greedy, beam search, exhaustive and exact search.

Every search starts from ⟨BOS⟩ (``bos=``) or from prompts (``prompt=``: one
list of ids, or a batch: a 2-D array with ``attention_mask`` for left padding,
or a list of token lists) and returns a list of ``Hypothesis`` (best first)
sharing one ``SearchStats`` record; for a batch of prompts, one such list per
prompt.  A hypothesis has ``max_len`` new tokens or ends at an ``eos`` token
(kept in ``tokens``; the prompt is not).  Candidates of log-probability -inf (a
pruned ``TreeLM`` path) are never kept; a search that finds no sequence of
finite log-probability raises ``ValueError``.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from fastdl import registry
from fastdl._validate import check_int, check_real
from fastdl.decode._model import Model, token_id
from fastdl.decode.beams import Backpointers, BeamConfig, _pow_exceeds, no_sequence, run_beams
from fastdl.decode.lm import INT64_MAX
from fastdl.decode.ops import log_softmax
from fastdl.decode.prompts import Prompts, prompts as _prompts

__all__ = ["Hypothesis", "SearchStats", "greedy", "beam_search", "exhaustive_search",
           "exact_search"]


@dataclass
class SearchStats:
    """What a search did, for a complexity report.

    ``prompts`` is the batch size; ``candidates_scored`` is Σ_t B_t·N summed
    over the prompts (B_t the live hypotheses; ``padded_rows`` counts the rows
    a batch carried only to keep every prompt's beams the same width).
    ``hypothesis_tokens`` is what the search stores for its hypotheses
    (backpointers: one token per live hypothesis per step, O(B·T)); ``prefix_copy_tokens`` is what copying each
    beam's whole prefix at every step, as textbook beam search does, would move
    (Σ_t B_t·t, O(B·T²)).  Times are wall seconds: ``lm_time_s`` the model's
    forward passes (and its ``initial_state``/``prefill``); ``search_time_s``
    everything else, including ``reorder_time_s``, the model's ``reorder`` calls
    (cache bookkeeping the search asks for, as Hugging Face counts its cache
    reordering outside the model); ``kernel_time_s`` is the ``beam_topk`` calls.
    The one-time import of the compiled backend on a process's first search
    happens before the clock starts.
    """

    algorithm: str
    prompts: int = 1
    lm_calls: int = 0
    steps: int = 0
    candidates_scored: int = 0
    heap_pushes: int = 0
    heap_pops: int = 0
    hypothesis_tokens: int = 0
    prefix_copy_tokens: int = 0
    lm_time_s: float = 0.0
    reorder_time_s: float = 0.0
    kernel_time_s: float = 0.0
    dead_ends: int = 0
    padded_rows: int = 0
    total_time_s: float = 0.0
    trace: list | None = None

    @property
    def search_time_s(self) -> float:
        return self.total_time_s - self.lm_time_s

    @property
    def overhead_per_step_s(self) -> float:
        return self.search_time_s / max(self.steps, 1)


@dataclass(frozen=True)
class Hypothesis:
    """``tokens`` (w_1..w_L, ⟨BOS⟩ excluded, ``eos`` included when emitted),
    ``log_prob`` = Σ log p(w_t | w_{0:t-1}), ``score`` = log_prob / L^α
    (α = ``length_penalty``; 0 for the other searches)."""

    tokens: tuple
    log_prob: float
    score: float
    stats: SearchStats = field(compare=False, repr=False)


def _count(value, name: str, minimum: int = 0) -> int:
    """An int argument in [minimum, 2**63 - 1]: sizes and ids meet int64 arrays."""
    return check_int(value, name, minimum=minimum, maximum=INT64_MAX, maximum_text="2**63 - 1")


def _load_backends(ops, backend) -> None:
    """Resolve the backends of ``ops`` before any clock starts.  The first resolution in
    a process imports the compiled backend (and SciPy's BLAS with it): a few hundred
    milliseconds, once, that are neither search nor kernel time."""
    for op in ops:
        try:
            registry.which_backend(op, backend=backend)
        except registry.BackendNotImplementedError:
            pass                 # the call that needs the op, if any, reports it


def _common(max_len, length_penalty=0.0):
    max_len = _count(max_len, "max_len", minimum=1)
    alpha = check_real(length_penalty, "length_penalty")
    # scores divide by len**alpha with len <= max_len: it must stay a finite, nonzero float
    if abs(alpha) * math.log(max_len) > 700.0:
        raise ValueError(f"length_penalty={alpha} with max_len={max_len} makes "
                         f"len**length_penalty overflow float64; keep |length_penalty| <= "
                         f"{700.0 / math.log(max_len):.4g} for this max_len")
    return max_len, alpha


def _check_beam_args(beam_width, num_return, early_stopping, min_len, no_repeat_ngram_size,
                     names=("beam_width", "num_return")):
    B = _count(beam_width, names[0], minimum=1)
    num_return = B if num_return is None else _count(num_return, names[1], minimum=1)
    if num_return > B:
        raise ValueError(f"{names[1]} must be <= {names[0]} ({B}), got {num_return}")
    if isinstance(early_stopping, (bool, np.bool_)):
        early_stopping = bool(early_stopping)
    elif not (isinstance(early_stopping, str) and early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    return (B, num_return, early_stopping, _count(min_len, "min_len"),
            _count(no_repeat_ngram_size, "no_repeat_ngram_size"))


def _trace_step(t, lp, normalize, scores, bp, cs, cb, cj):
    """All finite candidates of this step, per beam (for small vocabularies)."""
    full = (log_softmax(lp) if normalize else lp) + scores[:, None]
    prefixes = bp.tokens_of(t - 1, np.arange(lp.shape[0])) if t > 1 else np.zeros((1, 0), np.int64)
    cands = [(tuple(prefixes[b].tolist()), int(j), float(full[b, j]))
             for b in range(lp.shape[0]) for j in np.flatnonzero(np.isfinite(full[b]))]
    chosen = [(tuple(prefixes[b].tolist()), int(j), float(s)) for s, b, j in zip(cs, cb, cj)
              if s > -np.inf]
    return {"step": t, "candidates": cands, "selected": chosen}


def _start(bos, prompt, attention_mask) -> Prompts:
    if prompt is None and bos is None:
        raise ValueError("give bos (a start token id) or prompt= (the prompts' token ids)")
    if prompt is not None and bos is not None:
        raise ValueError("give bos or prompt=, not both: a prompt includes its start token")
    if bos is not None:
        token_id(bos, "bos", None)              # the id must fit the int64 prompt array
    # lists of different lengths are left-padded with 0 under a mask: the model never
    # reads the padding, and n-gram bans skip it
    return _prompts(prompt, attention_mask, bos=bos, pad=0, name="prompt")


def _shape(p: Prompts, per_prompt):
    return per_prompt[0] if p.single else per_prompt


def _beam(lm, B, max_len, *, bos, eos, prompt, attention_mask, length_penalty, num_return,
          early_stopping, min_len, no_repeat_ngram_size, trace, backend, algorithm):
    _load_backends(("beam_topk", "log_softmax"), backend)
    p = _start(bos, prompt, attention_mask)
    if trace and p.batch > 1:
        raise ValueError(f"trace=True records the candidates of one prompt; got {p.batch}")
    start = time.perf_counter()
    stats = SearchStats(algorithm, prompts=p.batch, trace=[] if trace else None)
    model = Model(lm, bos, eos, stats)
    cfg = BeamConfig(B, max_len, alpha=length_penalty, num_return=num_return,
                     early_stopping=early_stopping, min_new=min_len, ngram=no_repeat_ngram_size)
    def record(t, lp, normalize, scores, bp, cs, cb, cj):
        stats.trace.append(_trace_step(t, lp, normalize, scores, bp, cs, cb, cj))
    results, _ = run_beams(model, p, cfg, stats, backend, trace_step=record if trace else None)
    stats.total_time_s = time.perf_counter() - start
    return _shape(p, [[Hypothesis(tokens, float(lp_), float(s), stats)
                       for tokens, lp_, s, _ in best] for best in results])


def greedy(lm, max_len, *, bos=None, eos=None, prompt=None, attention_mask=None,
           backend: str | None = None):
    """Greedy decoding: the most likely next token at every step (lowest id on ties).

    Identical to ``beam_search`` with ``beam_width=1``.  Starts from ``bos`` or
    from ``prompt`` (see the module docstring).  Returns ``[Hypothesis]``, or
    one such list per prompt for a batch.
    """
    max_len, _ = _common(max_len)
    return _beam(lm, 1, max_len, bos=bos, eos=eos, prompt=prompt, attention_mask=attention_mask,
                 length_penalty=0.0, num_return=1, early_stopping=True, min_len=0,
                 no_repeat_ngram_size=0, trace=False, backend=backend, algorithm="greedy")


def beam_search(lm, beam_width, max_len, *, bos=None, eos=None, prompt=None, attention_mask=None,
                length_penalty=0.0, num_return=None,
                early_stopping=True, min_len=0, no_repeat_ngram_size=0, trace=False,
                backend: str | None = None):
    """Beam search with backpointers, following Hugging Face ``generate(num_beams=...)``.

    Each step keeps the best ``beam_width`` of the B×N candidates (one fused
    ``beam_topk``); the first step expands a single ⟨BOS⟩, so beams never
    duplicate.  A candidate *ends* when its token is ``eos`` (an id or a list
    of ids) or it has ``max_len`` tokens; an ending candidate among the best
    ``beam_width`` of the step joins the finished list (which keeps the best
    ``beam_width`` by score), the others live on.  So at ``max_len`` the best
    ``beam_width`` candidates all finish, whatever the stopping rule.  After
    each step the search stops per ``early_stopping``, as Hugging Face does:
    True: once ``beam_width`` hypotheses finished; False: once the best live
    beam, scored at its current length, cannot beat the worst finished one (a
    heuristic when α > 0); "never": the same with the length that favours the
    live beam most (``max_len`` when α > 0).  ``length_penalty`` α: score =
    log_prob / len^α, len counting eos (0: the raw log-likelihood).
    ``min_len`` forbids eos before that many tokens; ``no_repeat_ngram_size`` n
    forbids repeating an n-gram (⟨BOS⟩ or the prompt included).  ``trace=True`` records every
    step's candidates in ``stats.trace`` (small vocabularies).  Returns the
    best ``num_return`` (default ``beam_width``) hypotheses by score; fewer
    when fewer sequences have a finite log-probability (Hugging Face would
    return the missing ones with scores of -1e9).  ``beam_width`` may exceed N (later steps fill the
    beam) but not N^max_len, the number of sequences.
    """
    max_len, length_penalty = _common(max_len, length_penalty)
    B, num_return, early_stopping, min_len, ngram = _check_beam_args(
        beam_width, num_return, early_stopping, min_len, no_repeat_ngram_size)
    return _beam(lm, B, max_len, bos=bos, eos=eos, prompt=prompt, attention_mask=attention_mask,
                 length_penalty=length_penalty, num_return=num_return,
                 early_stopping=early_stopping, min_len=min_len,
                 no_repeat_ngram_size=ngram, trace=bool(trace), backend=backend,
                 algorithm="beam_search")


def _each(p: Prompts):
    """The prompts one by one, unpadded (the searches below are per sequence)."""
    for i in range(p.batch):
        row = p.row(i)
        yield Prompts(row[None, :].copy(), None, np.array([row.size], np.int64), True)


def exhaustive_search(lm, max_len, *, bos=None, eos=None, prompt=None, attention_mask=None,
                      top=1, limit=1_000_000, backend: str | None = None):
    """Score every sequence by brute force: N^max_len of them, level by
    level, O(T·N^T) time.  Refuses (``ValueError``) when N^max_len > ``limit``.
    Returns the best ``top`` hypotheses; equal scores in token order.  A batch
    of prompts is searched one prompt after the other."""
    _load_backends(("log_softmax",), backend)
    max_len, _ = _common(max_len)
    top = _count(top, "top", minimum=1)
    limit = _count(limit, "limit", minimum=1)
    p = _start(bos, prompt, attention_mask)
    return _shape(p, [_exhaustive(lm, max_len, bos, eos, one, top, limit, backend)
                      for one in _each(p)])


def _exhaustive(lm, max_len, bos, eos, prompt, top, limit, backend):
    start = time.perf_counter()
    stats = SearchStats("exhaustive_search")
    model = Model(lm, bos, eos, stats)
    eos_set = np.array(model.eos, np.int64)
    bp = Backpointers()
    done = []        # complete sequences, by batch: (depth, rows, scores, eos token or None)

    def finish(depth, rows, scores, extra=None):
        done.append((depth, rows, scores, extra))

    model.start(prompt)
    scores = np.zeros(1)
    for t in range(1, max_len + 1):
        lp, _ = model.step()
        rows, N = lp.shape
        if t == 1 and _pow_exceeds(N, max_len, limit):
            raise ValueError(f"exhaustive search would score N^max_len = {N}^{max_len} "
                             f"sequences, over limit={limit}; raise limit= or use "
                             "beam_search/exact_search")
        stats.steps += 1
        stats.candidates_scored += rows * N
        if not model.normalized:
            lp = log_softmax(lp, backend=backend)
        total = scores[:, None] + lp                       # (rows, N), every child
        if eos_set.size:                                   # children ending in eos finish
            r, c = np.meshgrid(np.arange(rows), eos_set, indexing="ij")
            finish(t - 1, r.ravel(), total[r, c].ravel(), c.ravel())
        going = np.setdiff1d(np.arange(N), eos_set)        # the other children continue
        par = np.repeat(np.arange(rows), going.size)
        tok = np.tile(going, rows)
        if par.size == 0:
            break
        bp.push(par, tok, stats)
        scores = total[par, tok]
        if t < max_len:
            model.advance(par, tok)
    if scores.size and bp.tokens and len(bp.tokens) == max_len:
        finish(max_len, np.arange(scores.size), scores)
    # only sequences scoring at least the top-th best (ties included) are spelled out
    every = np.concatenate([sc for _, _, sc, _ in done])
    finite = every[every > -np.inf]                    # probability-0 sequences are not results
    if finite.size == 0:
        raise no_sequence("exhaustive_search")
    m = min(top, finite.size)
    bar = np.partition(finite, finite.size - m)[finite.size - m]
    cands = []
    for depth, rows, sc, extra in done:
        pick = np.flatnonzero((sc >= bar) & (sc > -np.inf))
        seqs = bp.tokens_of(depth, rows[pick])
        if extra is not None:
            seqs = np.concatenate([seqs, extra[pick][:, None]], axis=1)
        cands.extend(zip(sc[pick].tolist(), map(tuple, seqs.tolist())))
    best = sorted(cands, key=lambda c: (-c[0], c[1]))[:top]
    stats.total_time_s = time.perf_counter() - start
    return [Hypothesis(seq, float(score), float(score), stats) for score, seq in best]


def exact_search(lm, max_len, *, bos=None, eos=None, prompt=None, attention_mask=None,
                 max_expansions=None, backend: str | None = None):
    """The most likely sequence (the true argmax of Σ log p) by best-first
    (uniform-cost) search.

    Log-probabilities are <= 0, so a prefix's log-probability bounds every
    extension's: the first complete hypothesis taken from the frontier is
    optimal, usually after expanding a tiny part of the N^T tree.  Equal to
    ``exhaustive_search(top=1)`` wherever both run.  ``max_expansions``: LM
    calls allowed before giving up with ``ValueError``.  For a stateful model
    each expansion branches its node's state with ``reorder(state, [0])``.
    A batch of prompts is searched one prompt after the other.
    """
    _load_backends(("log_softmax",), backend)
    max_len, _ = _common(max_len)
    if max_expansions is not None:
        max_expansions = _count(max_expansions, "max_expansions", minimum=1)
    p = _start(bos, prompt, attention_mask)
    return _shape(p, [_exact(lm, max_len, bos, eos, one, max_expansions, backend)
                      for one in _each(p)])


def _exact(lm, max_len, bos, eos, prompt, max_expansions, backend):
    start = time.perf_counter()
    stats = SearchStats("exact_search")
    model = Model(lm, bos, eos, stats)
    eos_set = frozenset(model.eos)
    order = itertools.count()
    # node: (tokens tuple, state-or-None); frontier entries: (-score, tokens, complete, id)
    states: dict[int, object] = {}
    frontier = [(-0.0, (), False, next(order))]
    stats.heap_pushes += 1
    held = 0                     # tokens held by the frontier's prefixes
    model.start(prompt)          # the root's expansion runs the prompt through the model
    head = tuple(prompt.ids[0].tolist())
    while frontier:
        neg, tokens, complete, nid = heapq.heappop(frontier)
        stats.heap_pops += 1
        held -= len(tokens)
        if complete:
            stats.total_time_s = time.perf_counter() - start
            return [Hypothesis(tokens, -float(neg), -float(neg), stats)]
        if max_expansions is not None and stats.lm_calls >= max_expansions:
            raise ValueError(f"exact_search expanded max_expansions={max_expansions} prefixes "
                             "without proving an optimum; raise max_expansions")
        if tokens:
            model.t = len(tokens)
            model.last = np.array([tokens[-1]], np.int64)
            if model.stateful:
                model.state = model.branch(states.pop(nid))
            else:
                model.hist = np.array([head + tokens], np.int64)
        lp, _ = model.step()
        stats.steps += 1
        stats.candidates_scored += lp.shape[1]
        if not model.normalized:
            lp = log_softmax(lp, backend=backend)
        row = lp[0].astype(np.float64)
        for j in np.flatnonzero(row > -np.inf).tolist():
            child = tokens + (j,)
            done = j in eos_set or len(child) == max_len
            cid = next(order)
            heapq.heappush(frontier, (neg - row[j], child, done, cid))
            stats.heap_pushes += 1
            held += len(child)
            if not done and model.stateful:
                states[cid] = model.state
        stats.hypothesis_tokens = max(stats.hypothesis_tokens, held)
    raise no_sequence(f"exact_search, after {stats.steps} expansions")
