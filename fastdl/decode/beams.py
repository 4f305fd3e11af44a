"""Beam search over a batch of prompts: one LM call and one fused top-k per step.

Rows are laid out prompt by prompt (``groups`` × ``width``).  Each prompt keeps
its own finished list (Hugging Face's per-batch-row ``BeamHypotheses``) and
leaves the batch as soon as it is done, so finished prompts cost nothing.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np

from fastdl.decode import processors as P
from fastdl.decode.ops import beam_topk, log_softmax

__all__ = ["BeamConfig", "run_beams", "Backpointers", "Finished"]


@dataclass
class BeamConfig:
    beams: int
    max_new: int
    alpha: float = 0.0                  # length penalty
    num_return: int = 1
    early_stopping: bool | str = True
    min_new: int = 0
    ngram: int = 0
    ngram_padding: bool = False         # n-grams over the padded row (Hugging Face) or not
    repetition_penalty: float = 1.0
    sample: bool = False                # Hugging Face's beam sampling
    warp: dict | None = None            # sampling filters (processors.warp keywords)
    rng: np.random.Generator | None = None
    scores: bool = False                # keep every step's processed log-probs
    trace: bool = False
    beams_name: str = "beam_width"      # how the caller named the number of beams


class Backpointers:
    """Per step: each row's parent row and token; O(Σ B_t) memory."""

    def __init__(self):
        self.parents: list[np.ndarray] = []
        self.tokens: list[np.ndarray] = []

    def push(self, parents, tokens, stats, live=None):
        self.parents.append(parents)
        self.tokens.append(tokens)
        n = len(tokens) if live is None else live
        stats.hypothesis_tokens += n
        stats.prefix_copy_tokens += n * len(self.tokens)

    def tokens_of(self, depth: int, rows) -> np.ndarray:
        """(len(rows), depth) tokens of the hypotheses ``rows`` at ``depth``."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), depth), np.int64)
        for d in range(depth, 0, -1):
            out[:, d - 1] = self.tokens[d - 1][rows]
            rows = self.parents[d - 1][rows]
        return out

    def rows_of(self, depth: int, row: int) -> list[int]:
        """The row of each ancestor of ``row`` (steps 1..depth), oldest first."""
        out = []
        for d in range(depth, 0, -1):
            row = int(self.parents[d - 1][row])
            out.append(row)
        return out[::-1]


class Finished:
    """The best ``capacity`` finished hypotheses (Hugging Face's BeamHypotheses):
    a min-heap on score; a newcomer enters when there is room or it beats the worst."""

    def __init__(self, capacity: int, alpha: float, stats):
        self.capacity, self.alpha, self.stats = capacity, alpha, stats
        self.heap: list = []
        self.order = itertools.count()

    def score(self, log_prob: float, length: int) -> float:
        return log_prob / length ** self.alpha if self.alpha else log_prob

    def worst(self) -> float:
        return self.heap[0][0]

    def add(self, log_prob: float, tokens: tuple, extra=None):
        s = self.score(log_prob, len(tokens))
        if len(self.heap) < self.capacity or s > self.worst():
            # among equal scores the later one is the worse (it leaves first)
            heapq.heappush(self.heap, (s, -next(self.order), log_prob, tokens, extra))
            self.stats.heap_pushes += 1
            if len(self.heap) > self.capacity:
                heapq.heappop(self.heap)
                self.stats.heap_pops += 1

    def done(self, best_live: float, cur_len: int, max_len: int, early_stopping) -> bool:
        if len(self.heap) < self.capacity:
            return False
        if early_stopping is True:
            return True
        length = max_len if (early_stopping == "never" and self.alpha > 0) else cur_len
        return self.worst() >= self.score(best_live, length)

    def best(self, n: int):
        items = sorted(self.heap, key=lambda e: (-e[0], -e[1]))[:n]
        return [(tokens, log_prob, s, extra) for s, _, log_prob, tokens, extra in items]


def no_sequence(where: str) -> ValueError:
    return ValueError(f"{where}: every continuation of the live prefixes has log-probability "
                      "-inf, so no sequence of max_len tokens (or ending in eos) has a finite "
                      "log-probability; lower max_len or give the model an eos token")


def sequences(prompts, groups, width, bp, t):
    """The full rows (prompt then tokens so far) and which positions are padding."""
    g = np.repeat(groups, width)
    gen = bp.tokens_of(t - 1, np.arange(len(g))) if t > 1 else np.zeros((len(g), 0), np.int64)
    seqs = np.concatenate([prompts.ids[g], gen], axis=1)
    real = np.concatenate([prompts.full_mask()[g] == 1, np.ones(gen.shape, bool)], axis=1)
    return seqs, real


def process(lp, m, t, cfg, eos, normalize, model, groups, width, bp, backend):
    """Log-softmax, then Hugging Face's processors on the log-probs (beam search
    applies them after log_softmax); returns (log-probs, normalize)."""
    ban_eos = eos and t - 1 < cfg.min_new
    if not (ban_eos or cfg.ngram or cfg.repetition_penalty != 1.0 or cfg.sample
            or cfg.scores):
        return lp, normalize
    if m is None:
        m = model.row_max(lp)
    lp = log_softmax(lp, backend=backend) if normalize else lp.copy()
    lp[m == -np.inf] = -np.inf                 # log_softmax made a dead row NaN
    lp = P.process(lp, lambda: sequences(model.prompts, groups, width, bp, t),
                   penalty=cfg.repetition_penalty, ngram=cfg.ngram,
                   ngram_padding=cfg.ngram_padding, ban=eos if ban_eos else ())
    if cfg.warp:
        live = lp.max(axis=1) > -np.inf
        if live.any():
            lp[live] = P.warp(lp[live], backend=backend, **cfg.warp)
    return lp, False


def group_topk(lp, scores, G, width, k, normalize, backend):
    """The best k candidates of each prompt's rows: (scores, beam, token), each (G, k),
    from one batched ``beam_topk``."""
    N = lp.shape[1]
    return beam_topk(lp.reshape(G, width, N), scores.reshape(G, width), k,
                     normalize=normalize, backend=backend)


def sample_candidates(lp, scores, G, width, k, rng):
    """Hugging Face's beam sampling: k candidates per prompt drawn without
    replacement from softmax(beam score + log-prob), sorted best first."""
    N = lp.shape[1]
    acc = (lp.astype(np.float64) + scores.astype(np.float64)[:, None]).reshape(G, width * N)
    cs = np.full((G, k), -np.inf)
    idx = np.zeros((G, k), np.int64)
    for g in range(G):
        row = acc[g]
        if not np.isfinite(row.max()):
            continue
        p = np.exp(row - row.max())
        n = min(k, int(np.count_nonzero(p)))
        pick = rng.choice(row.size, size=n, replace=False, p=p / p.sum())
        pick = pick[np.argsort(-row[pick], kind="stable")]
        idx[g, :n], cs[g, :n] = pick, row[pick]
    return cs.astype(lp.dtype), idx // N, idx % N


def run_beams(model, prompts, cfg: BeamConfig, stats, backend=None, trace_step=None):
    """Beam search from every prompt; per prompt, the best ``num_return``
    finished hypotheses ``(tokens, log_prob, score, rows)`` (``rows``: the parent
    row of each step within the prompt's beams) and, with ``cfg.scores``, per
    step ``(groups, width, processed log-probs)``."""
    B, G = cfg.beams, prompts.batch
    eos = model.eos
    eos_arr = np.array(eos, np.int64)
    fin = [Finished(B, cfg.alpha, stats) for _ in range(G)]
    bp = Backpointers()
    widths = [1]
    # room for eos candidates: Hugging Face takes max(2, 1 + n_eos)·B; without eos the
    # extra B could only ever be the next beams' runners-up, so they are not fetched
    # (beam sampling draws them: they change which B survive)
    k_factor = max(2, 1 + len(eos)) if cfg.sample else 1 + len(eos)
    groups, width = np.arange(G), 1
    scores = np.zeros(G)
    step_scores = [] if cfg.scores else None
    model.start(prompts)
    for t in range(1, cfg.max_new + 1):
        last = t == cfg.max_new
        lp, m = model.step(fast=True)       # logits: the fused top-k finds NaN/+inf rows
        rows, N = lp.shape
        live_rows = int(np.count_nonzero(scores > -np.inf))
        if t == 1 and not _pow_exceeds(N, cfg.max_new, B - 1):
            raise ValueError(f"{cfg.beams_name} must be <= the number of sequences "
                             f"N^max_len = {N}^{cfg.max_new}, got {B}")
        stats.steps += 1
        stats.candidates_scored += live_rows * N
        stats.padded_rows += rows - live_rows
        lp, normalize = process(lp, m, t, cfg, eos, not model.normalized, model, groups, width,
                                bp, backend)
        if step_scores is not None:
            step_scores.append((groups, width, lp))
        scores = scores.astype(lp.dtype, copy=False)
        Ga = len(groups)
        t0 = time.perf_counter()
        if cfg.sample:
            cs, cb, cj = sample_candidates(lp, scores, Ga, width, min(k_factor * B, width * N),
                                           cfg.rng)
        else:
            k = min(B if last else k_factor * B, width * N)
            cs, cb, cj = group_topk(lp, scores, Ga, width, k, normalize, backend)
        stats.kernel_time_s += time.perf_counter() - t0
        if m is None and np.isnan(cs[:, 0]).any():       # NaN ranks first
            model.check_rows(lp)
        if trace_step is not None:
            trace_step(t, lp, normalize, scores, bp, cs[0], cb[0], cj[0])
        nxt = _select(cs, cb, cj, t, last, B, eos_arr, groups, width, fin, bp, cfg, stats, G)
        if nxt is None:
            break
        kg, par, tok, scores, live = nxt
        bp.push(par, tok, stats, live=live)
        model.advance(par, tok)
        groups, width = groups[kg], len(par) // len(kg)
        widths.append(width)
    results = []
    for g in range(G):
        best = []
        for tokens, lp_, s, (t, parent) in fin[g].best(cfg.num_return):
            path = bp.rows_of(t - 1, parent) + [parent]
            # a row's position within its prompt's beams at each step
            best.append((tokens, lp_, s, [r % widths[d] for d, r in enumerate(path)]))
        results.append(best)
    return results, step_scores


def _select(cs, cb, cj, t, last, B, eos_arr, groups, width, fin, bp, cfg, stats, G):
    """This step's finished hypotheses into their lists, and the next beams:
    ``(kept groups, parent rows, tokens, scores, live rows)``, or None to stop."""
    Ga, k = cs.shape
    top = cs[:, :B]
    if not last and k >= B and (top > -np.inf).all() and not (
            eos_arr.size and np.isin(cj[:, :B], eos_arr).any()):
        # the common step: every prompt's best B go on, nothing finishes; a prompt can
        # only be done if its finished list was already full
        keep = [gi for gi in range(Ga) if not (
            len(fin[groups[gi]].heap) >= B and
            fin[groups[gi]].done(float(top[gi, 0]), t, cfg.max_new, cfg.early_stopping))]
        if not keep:
            return None
        kg = np.array(keep, np.int64)
        par = (kg[:, None] * width + cb[kg, :B]).ravel()
        return kg, par, cj[kg, :B].ravel(), top[kg].ravel(), len(par)
    finite = cs > -np.inf
    ends = finite if last else finite & np.isin(cj, eos_arr)
    cont = finite & ~ends
    sel = cont & (np.cumsum(cont, axis=1) <= B)
    # an ending candidate competes for the finished list only from the best B ranks;
    # the others were fetched to keep B beams alive
    ending = ends & (np.arange(k) < B)[None, :]
    for gi in np.flatnonzero(ending.any(axis=1)).tolist():
        f = fin[groups[gi]]
        for pos in np.flatnonzero(ending[gi]).tolist():
            parent = gi * width + int(cb[gi, pos])
            toks = tuple(bp.tokens_of(t - 1, [parent])[0].tolist()) + (int(cj[gi, pos]),)
            f.add(float(cs[gi, pos]), toks, (t, parent))
    if last:                  # the finished tokens are kept hypotheses too
        n_end = int(ending.sum())
        stats.hypothesis_tokens += n_end
        stats.prefix_copy_tokens += n_end * t
    n_sel = sel.sum(axis=1)
    keep = []
    for gi in range(Ga):
        g = int(groups[gi])
        if n_sel[gi] == 0:
            if not fin[g].heap:
                raise no_sequence(f"step {t}" if G == 1 else f"prompt {g}, step {t}")
            continue
        best_live = float(cs[gi, np.argmax(sel[gi])])
        # stop only after this step's hypotheses joined the finished list
        if not fin[g].done(best_live, t, cfg.max_new, cfg.early_stopping):
            keep.append(gi)
    if not keep:
        return None
    kg = np.array(keep, np.int64)
    new_w = int(n_sel[kg].max())
    order = np.argsort(~sel[kg], axis=1, kind="stable")[:, :new_w]   # selected first
    valid = np.arange(new_w)[None, :] < n_sel[kg][:, None]
    order = np.where(valid, order, order[:, :1])        # padding rows copy the best
    par = (kg[:, None] * width + np.take_along_axis(cb[kg], order, axis=1)).ravel()
    tok = np.take_along_axis(cj[kg], order, axis=1).ravel()
    scores = np.where(valid, np.take_along_axis(cs[kg], order, axis=1), -np.inf).ravel()
    return kg, par, tok, scores, int(valid.sum())


def _pow_exceeds(N: int, T: int, bound: int) -> bool:
    """N**T > bound, without building N**T when it is astronomically large."""
    if N <= 1:
        return 1 > bound
    if T * math.log2(N) > math.log2(max(bound, 1)) + 2:
        return True
    return N ** T > bound
