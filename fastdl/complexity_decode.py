"""Exact counts of the decoding searches beyond those in ``fastdl.complexity``: greedy,
brute-force enumeration, the cost of choosing the next beams (a full sort against a
heap of size k), the memory of a beam search and of a full probability table.

N tokens in the vocabulary, T generated tokens, beam width B; B_t = min(B, N^(t-1))
live beams enter step t (the first step expands the single ⟨BOS⟩), so step t has
n_t = B_t·N candidates.  ``prompts`` searches run side by side add up.

The instrumented helpers (``counted_merge_sort``, ``counted_heap_topk``,
``naive_enumeration``) do the textbook operations in plain Python and count them,
so a test or a report can set a run's counts beside the formulas.
"""
from __future__ import annotations

import itertools
import math
import numbers
from fractions import Fraction

import numpy as np

__all__ = ["greedy_candidates", "exhaustive_terms", "beam_step_candidates",
           "merge_sort_comparisons_bound", "beam_sort_comparisons_bound", "beam_sort_cost",
           "heap_topk_comparisons_bound", "beam_heap_comparisons_bound", "beam_heap_cost",
           "beam_space_elements", "full_table_bytes", "full_table_terabytes",
           "beam_lm_rows", "beam_attention_entries",
           "counted_merge_sort", "counted_heap_topk", "naive_enumeration", "PrefixCountingLM"]


def _pos(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def greedy_candidates(N: int, T: int, *, prompts: int = 1) -> int:
    """Candidates greedy decoding scores: N next tokens at each of T steps, T·N."""
    _pos(N=N, T=T, prompts=prompts)
    return prompts * T * N


def exhaustive_terms(N: int, T: int) -> int:
    """Conditional log-probabilities summed when each of the N^T sequences is scored on
    its own, term by term: T·N^T (sharing the prefixes, as a level-by-level search
    does, needs only N + N² + … + N^T of them)."""
    _pos(N=N, T=T)
    return T * N ** T


def beam_step_candidates(B: int, N: int, T: int) -> list:
    """n_t = B_t·N, the candidates of each step t = 1..T (no eos)."""
    _pos(B=B, N=N, T=T)
    return [min(B, N ** (t - 1)) * N for t in range(1, T + 1)]


def merge_sort_comparisons_bound(n: int) -> int:
    """Worst-case comparisons of a top-down merge sort of n items:
    n·⌈log2 n⌉ − 2^⌈log2 n⌉ + 1, never more than n·log2 n."""
    _pos(n=n)
    c = (n - 1).bit_length()            # ⌈log2 n⌉
    return n * c - (1 << c) + 1


def beam_sort_comparisons_bound(B: int, N: int, T: int, *, prompts: int = 1) -> int:
    """Comparisons, at most, of a beam search that sorts each step's n_t candidates
    (merge sort): Σ_t n_t·⌈log2 n_t⌉ − 2^⌈log2 n_t⌉ + 1 <= T·B·N·log2(B·N)."""
    _pos(prompts=prompts)
    return prompts * sum(merge_sort_comparisons_bound(n) for n in beam_step_candidates(B, N, T))


def beam_sort_cost(B: int, N: int, T: int) -> int:
    """The usual sort-based cost T·B·N·log2(B·N), rounded up to an int: every step
    sorts all B·N candidates (the first step's N included, as if beams were full)."""
    _pos(B=B, N=N, T=T)
    return math.ceil(T * B * N * math.log2(B * N))


def heap_topk_comparisons_bound(n: int, k: int) -> int:
    """Worst-case comparisons of ``counted_heap_topk`` keeping the k best of n items,
    with L = ⌊log2 k⌋: building a min-heap of the first k (<= 2k), then per other item
    one comparison with the heap's worst and, when it enters, a sift-down (<= 2L), then
    popping the k kept in order (<= 2L each): 2k + (n−k)(1 + 2L) + 2kL.  The usual
    O(n·log k) term; for random scores few items enter, so a run is near n."""
    _pos(n=n, k=k)
    if k > n:
        raise ValueError(f"k must be <= n={n}, got {k}")
    L = k.bit_length() - 1
    return 2 * k + (n - k) * (1 + 2 * L) + 2 * k * L


def beam_heap_comparisons_bound(B: int, N: int, T: int, *, prompts: int = 1) -> int:
    """Σ_t ``heap_topk_comparisons_bound``(n_t, min(B, n_t)): at most this many
    comparisons choose the next beams with a heap of size B (no eos)."""
    _pos(prompts=prompts)
    return prompts * sum(heap_topk_comparisons_bound(n, min(B, n))
                         for n in beam_step_candidates(B, N, T))


def beam_heap_cost(B: int, N: int, T: int) -> int:
    """The usual heap-based cost T·B·N·log2(B) (k = B kept of B·N per step), rounded up;
    0 when B = 1 (greedy needs only N − 1 comparisons per step)."""
    _pos(B=B, N=N, T=T)
    return math.ceil(T * B * N * math.log2(B))


def beam_space_elements(B: int, N: int, T: int, *, prompts: int = 1) -> int:
    """Numbers a beam search with backpointers holds at its peak: one token per live
    hypothesis per step (Σ_t B_(t+1), at most B·T) plus one step's candidate scores
    (at most B·N): O(B·(T + N))."""
    from fastdl.complexity import beam_backpointer_tokens
    _pos(prompts=prompts)
    return prompts * (beam_backpointer_tokens(B, N, T) + max(beam_step_candidates(B, N, T)))


def beam_lm_rows(B: int, N: int, T: int, *, prompts: int = 1) -> int:
    """Sequences the model is run on: B_t at step t, Σ_t B_t <= T·B (one forward per
    live beam per step, each scoring all N next tokens at once)."""
    _pos(prompts=prompts)
    return prompts * sum(n // N for n in beam_step_candidates(B, N, T))


def beam_attention_entries(B: int, N: int, T: int, *, cache: bool = False, causal: bool = False,
                           prompts: int = 1) -> int:
    """Attention scores one self-attention layer computes over a beam search's model
    calls, per head.  At step t each of the B_t beams has a prefix of t tokens
    (⟨BOS⟩ and t − 1 generated).  Re-running the model on the whole prefix computes
    t² scores (t(t+1)/2 with ``causal``, keys j <= i only): Σ_t B_t·t², the
    O(B·T³) term of a transformer without a cache.  With a key/value ``cache`` only
    the new token attends to the t keys: Σ_t B_t·t, O(B·T²)."""
    _pos(prompts=prompts)
    if not isinstance(cache, bool) or not isinstance(causal, bool):
        raise TypeError(f"cache and causal must be bools, got cache={cache!r}, causal={causal!r}")
    per = (lambda t: t) if cache else (lambda t: t * (t + 1) // 2) if causal else (lambda t: t * t)
    return prompts * sum((n // N) * per(t)
                         for t, n in enumerate(beam_step_candidates(B, N, T), start=1))


def full_table_bytes(N: int, T: int, *, itemsize: int = 8) -> int:
    """Bytes of a table holding the probability of every one of the N^T sequences:
    itemsize·N^T (8: float64).  For N = 20000, T = 10 this is 8·20000^10 =
    8.192·10^43 bytes."""
    _pos(N=N, T=T, itemsize=itemsize)
    return itemsize * N ** T


def full_table_terabytes(N: int, T: int, *, itemsize: int = 8) -> Fraction:
    """``full_table_bytes`` in terabytes (10^12 bytes), exactly: 8.192·10^31 TB for
    N = 20000, T = 10."""
    return Fraction(full_table_bytes(N, T, itemsize=itemsize), 10 ** 12)


# ---------------------------------------------------------------- instrumented runs

def _values(scores) -> list:
    a = np.asarray(scores, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("scores must not be empty")
    if np.isnan(a).any():
        raise ValueError("scores must not contain NaN (they do not order)")
    return a.tolist()


def counted_merge_sort(scores) -> tuple[list, int]:
    """Indices of ``scores`` from best to worst (ties: lower index first) by a top-down
    merge sort, and the comparisons it made."""
    v = _values(scores)
    count = 0

    def before(i, j):                   # i ranks before j
        nonlocal count
        count += 1
        return v[i] > v[j] or (v[i] == v[j] and i < j)

    def sort(idx):
        if len(idx) <= 1:
            return idx
        mid = len(idx) // 2
        a, b = sort(idx[:mid]), sort(idx[mid:])
        out, i, j = [], 0, 0
        while i < len(a) and j < len(b):
            if before(b[j], a[i]):
                out.append(b[j])
                j += 1
            else:
                out.append(a[i])
                i += 1
        return out + a[i:] + b[j:]

    return sort(list(range(len(v)))), count


def counted_heap_topk(scores, k: int) -> tuple[list, int]:
    """Indices of the k best ``scores``, best first (ties: lower index first), kept in
    a min-heap of size k, and the comparisons it made (see
    ``heap_topk_comparisons_bound``)."""
    v = _values(scores)
    _pos(k=k)
    if k > len(v):
        raise ValueError(f"k must be <= the number of scores ({len(v)}), got {k}")
    count = 0

    def worse(i, j):                    # i ranks after j
        nonlocal count
        count += 1
        return v[i] < v[j] or (v[i] == v[j] and i > j)

    def sift(h, pos, size):
        while 2 * pos + 1 < size:
            c = 2 * pos + 1
            if c + 1 < size and worse(h[c + 1], h[c]):
                c += 1
            if not worse(h[c], h[pos]):
                break
            h[c], h[pos] = h[pos], h[c]
            pos = c

    heap = list(range(k))
    for pos in range(k // 2 - 1, -1, -1):
        sift(heap, pos, k)
    for i in range(k, len(v)):
        if worse(heap[0], i):
            heap[0] = i
            sift(heap, 0, k)
    order = []
    for size in range(k, 0, -1):
        order.append(heap[0])
        heap[0] = heap[size - 1]
        sift(heap, 0, size - 1)
    return order[::-1], count


def naive_enumeration(lm, T: int, *, bos: int = 0) -> tuple[np.ndarray, int]:
    """Score every sequence of T tokens on its own: for each of the N^T sequences, walk
    its T steps from ⟨BOS⟩ and add its T conditional log-probabilities, sharing
    nothing.  ``lm`` follows the step protocol (``initial_state``, ``step``; logits
    when ``lm.normalized`` is false).  Returns the float64 table of the N^T joint
    log-probabilities (in token order) and the number of terms summed, T·N^T."""
    from fastdl.decode.ops import log_softmax
    _pos(T=T)
    probe, _ = lm.step(np.array([bos], np.int64), lm.initial_state(1))
    N = int(np.asarray(probe).shape[-1])
    table = np.empty(N ** T, np.float64)
    terms = 0
    for i, seq in enumerate(itertools.product(range(N), repeat=T)):
        state, prev, total = lm.initial_state(1), bos, 0.0
        for tok in seq:
            logits, state = lm.step(np.array([prev], np.int64), state)
            row = np.asarray(logits, np.float64)
            lp = row if getattr(lm, "normalized", False) else log_softmax(row)
            total += float(np.asarray(lp).reshape(-1)[tok])
            terms += 1
            prev = tok
        table[i] = total
    return table, terms


class PrefixCountingLM:
    """A callable language model (``lm(prefixes) -> logits``, ``normalized = False``) over
    ``vocab_size`` tokens that records the shape (rows, prefix length) of every call in
    ``calls``.  The logits of a prefix are a row of a fixed random table picked by a
    hash of the whole prefix, so every prefix has its own distribution."""

    normalized = False

    def __init__(self, vocab_size: int, *, seed: int = 0, table_rows: int = 97):
        _pos(vocab_size=vocab_size, table_rows=table_rows)
        self.vocab_size = int(vocab_size)
        self.table = np.random.default_rng(seed).standard_normal((table_rows, self.vocab_size))
        self.calls: list = []

    def __call__(self, prefixes, attention_mask=None):
        p = np.asarray(prefixes, np.int64)
        self.calls.append((int(p.shape[0]), int(p.shape[1])))
        weights = np.arange(1, p.shape[1] + 1, dtype=np.int64) * 7919
        return self.table[((p + 1) * weights).sum(axis=1) % len(self.table)]

    def attention_entries(self, *, cache: bool = False, causal: bool = False) -> int:
        """Σ over the recorded calls of rows × the scores of one prefix (see
        ``beam_attention_entries``)."""
        per = (lambda t: t) if cache else (lambda t: t * (t + 1) // 2) if causal else \
            (lambda t: t * t)
        return sum(rows * per(t) for rows, t in self.calls)
