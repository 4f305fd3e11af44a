"""The decoding counts of fastdl.complexity (greedy, brute force, choosing the beams by
sort or heap, memory) against instrumented runs of fastdl.decode's searches."""
import heapq
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from fastdl import complexity as cx
from fastdl.decode import beam_search, exhaustive_search, greedy
from fastdl.decode.examples import SyntheticLM


def test_the_course_memory_example_exactly():
    # 20000^10 float64 probabilities: 8·20000^10 bytes = 8.192·10^43 B = 8.192·10^31 TB,
    # not the 8^21 TB (≈ 9.2·10^18) the usual answer gives
    assert cx.full_table_bytes(20000, 10) == 8 * 20000 ** 10 == 8192 * 10 ** 40
    assert cx.full_table_terabytes(20000, 10) == Fraction(8192 * 10 ** 28)
    assert float(cx.full_table_terabytes(20000, 10)) == pytest.approx(8.192e31)
    assert cx.full_table_terabytes(20000, 10) > 10 ** 12 * 8 ** 21
    assert cx.exhaustive_sequences(20000, 10) == 1024 * 10 ** 40        # ≈ 10^43


def test_formulas_by_hand():
    assert cx.greedy_candidates(11, 6) == 66
    assert cx.greedy_candidates(11, 6, prompts=3) == 198
    assert cx.exhaustive_terms(3, 4) == 4 * 81
    assert cx.beam_step_candidates(4, 3, 4) == [3, 9, 12, 12]
    assert [cx.merge_sort_comparisons_bound(n) for n in (1, 2, 3, 4, 5, 8)] == [0, 1, 3, 5, 8, 17]
    assert cx.heap_topk_comparisons_bound(10, 1) == 2 + 9
    assert cx.heap_topk_comparisons_bound(10, 4) == 8 + 6 * 5 + 16
    assert cx.beam_sort_cost(2, 8, 3) == 3 * 2 * 8 * 4
    assert cx.beam_heap_cost(1, 8, 3) == 0
    # hypotheses (2 + 4 + 4) plus the widest step's scores (2·4)
    assert cx.beam_space_elements(4, 2, 3) == 10 + 8


@pytest.mark.parametrize("n", list(range(1, 40)) + [64, 100, 127, 1000])
def test_the_merge_sort_bound_is_below_n_log_n_and_reached(n):
    bound = cx.merge_sort_comparisons_bound(n)
    assert bound <= n * math.log2(n) + 1e-9
    worst = 0
    rng = np.random.default_rng(n)
    for _ in range(30 if n < 200 else 3):
        order, count = cx.counted_merge_sort(rng.permutation(n))
        assert count <= bound
        worst = max(worst, count)
    if n <= 4:                          # every order of a few items: the bound is attained
        worst = max(cx.counted_merge_sort(p)[1] for p in itertools.permutations(range(n)))
        assert worst == bound


@pytest.mark.parametrize("n,k", [(1, 1), (5, 1), (5, 5), (9, 3), (50, 7), (200, 16), (64, 63)])
def test_the_heap_top_k_is_right_and_within_its_bound(n, k):
    rng = np.random.default_rng(n * 31 + k)
    bound = cx.heap_topk_comparisons_bound(n, k)
    for v in (rng.standard_normal(n), np.arange(n, dtype=float), -np.arange(n, dtype=float),
              np.zeros(n)):
        top, count = cx.counted_heap_topk(v, k)
        expect = sorted(range(n), key=lambda i: (-v[i], i))[:k]
        assert top == expect
        assert count <= bound
        assert cx.counted_merge_sort(v)[0][:k] == expect


def test_the_comparisons_counted_are_the_real_ones():
    """The counters count every comparison: the same top-k through heapq with a
    counting key class costs the same order of comparisons, and a sort of n items
    cannot take fewer than ⌈log2 n!⌉ in the worst case."""
    class Key:
        made = 0

        def __init__(self, v):
            self.v = v

        def __lt__(self, other):
            Key.made += 1
            return self.v < other.v

    v = np.random.default_rng(0).standard_normal(500)
    heapq.nlargest(8, [Key(x) for x in v])
    ours = cx.counted_heap_topk(v, 8)[1]
    assert 0.5 * Key.made <= ours <= 2 * Key.made
    worst = max(cx.counted_merge_sort(p)[1] for p in itertools.permutations(range(6)))
    assert worst >= math.ceil(math.log2(math.factorial(6)))


@pytest.mark.parametrize("N,T", [(11, 6), (3, 1), (50, 4)])
def test_greedy_scores_T_times_N(N, T):
    st = greedy(SyntheticLM(N, seed=N), T, bos=0)[0].stats
    assert st.candidates_scored == cx.greedy_candidates(N, T)


def test_batched_counts_add_up_over_the_prompts():
    lm = SyntheticLM(7, seed=2)
    prompts = [[0], [0, 3], [0, 1, 2]]
    out = greedy(lm, 5, prompt=prompts)
    assert out[0][0].stats.prompts == 3
    assert out[0][0].stats.candidates_scored == cx.greedy_candidates(7, 5, prompts=3)
    st = beam_search(lm, 4, 5, prompt=prompts)[0][0].stats
    assert st.candidates_scored == 3 * cx.beam_candidates(4, 7, 5)
    assert st.hypothesis_tokens == 3 * cx.beam_backpointer_tokens(4, 7, 5)


@pytest.mark.parametrize("N,T", [(2, 5), (4, 3), (3, 4)])
def test_brute_force_counts(N, T):
    lm = SyntheticLM(N, seed=T, dtype=np.float64)
    every = exhaustive_search(lm, T, bos=0, top=N ** T)
    assert len(every) == cx.exhaustive_sequences(N, T)
    assert len({h.tokens for h in every}) == N ** T
    table, terms = cx.naive_enumeration(lm, T, bos=0)
    assert terms == cx.exhaustive_terms(N, T)
    assert table.nbytes == cx.full_table_bytes(N, T)
    # the table is the joint log-probabilities the search finds, in token order
    by_tokens = {h.tokens: h.log_prob for h in every}
    seqs = list(itertools.product(range(N), repeat=T))
    np.testing.assert_allclose(table, [by_tokens[s] for s in seqs], rtol=0, atol=1e-12)
    # sharing prefixes needs N + … + N^T terms, fewer than T·N^T once N > 1
    assert every[0].stats.candidates_scored == cx.exhaustive_scores(N, T) <= terms


@pytest.mark.parametrize("B,N,T", [(1, 7, 5), (2, 3, 4), (4, 3, 4), (3, 20, 5), (8, 6, 3)])
def test_choosing_the_beams_by_sort_or_heap_stays_within_the_counts(B, N, T):
    lm = SyntheticLM(N, seed=B + N, dtype=np.float64)
    hyps = beam_search(lm, B, T, bos=0, trace=True)
    st = hyps[0].stats
    sort_total = heap_total = widest = 0
    for step, n_t in zip(st.trace, cx.beam_step_candidates(B, N, T)):
        scores = [c[2] for c in step["candidates"]]
        assert len(scores) == n_t                           # the step's B_t·N candidates
        widest = max(widest, n_t)
        k = min(B, n_t)
        top, heap_count = cx.counted_heap_topk(scores, k)
        order, sort_count = cx.counted_merge_sort(scores)
        # the heap keeps what the search kept (the trace's selected candidates)
        kept = sorted((step["candidates"][i][0], step["candidates"][i][1]) for i in top)
        assert kept == sorted((p, j) for p, j, _ in step["selected"][:k])
        assert order[:k] == top
        assert heap_count <= cx.heap_topk_comparisons_bound(n_t, k)
        assert sort_count <= cx.merge_sort_comparisons_bound(n_t)
        sort_total += sort_count
        heap_total += heap_count
    assert sort_total <= cx.beam_sort_comparisons_bound(B, N, T) <= cx.beam_sort_cost(B, N, T)
    assert heap_total <= cx.beam_heap_comparisons_bound(B, N, T)
    assert st.candidates_scored == cx.beam_candidates(B, N, T) == sum(
        cx.beam_step_candidates(B, N, T))
    assert st.hypothesis_tokens + widest == cx.beam_space_elements(B, N, T) <= B * (T + N)


@pytest.mark.parametrize("B,N,T", [(1, 7, 5), (2, 3, 4), (4, 3, 4), (3, 20, 6), (9, 3, 3)])
def test_the_model_calls_a_beam_search_makes(B, N, T):
    lm = cx.PrefixCountingLM(N, seed=B)
    st = beam_search(lm, B, T, bos=0)[0].stats
    live = [n // N for n in cx.beam_step_candidates(B, N, T)]
    assert lm.calls == [(b, t) for t, b in enumerate(live, start=1)]   # B_t rows of t tokens
    assert sum(r for r, _ in lm.calls) == cx.beam_lm_rows(B, N, T) <= T * B
    assert st.lm_calls == len(lm.calls) == T
    for kw in ({}, {"causal": True}, {"cache": True}):
        assert lm.attention_entries(**kw) == cx.beam_attention_entries(B, N, T, **kw)
    assert cx.beam_attention_entries(B, N, T) <= B * T ** 3
    assert cx.beam_attention_entries(B, N, T, cache=True) <= B * T ** 2


def test_attention_entries_by_hand():
    # B_t = 1, 2, 2 (N = 2, B = 2): prefixes of 1, 2, 3 tokens
    assert cx.beam_attention_entries(2, 2, 3) == 1 + 2 * 4 + 2 * 9
    assert cx.beam_attention_entries(2, 2, 3, causal=True) == 1 + 2 * 3 + 2 * 6
    assert cx.beam_attention_entries(2, 2, 3, cache=True) == 1 + 2 * 2 + 2 * 3
    assert cx.beam_lm_rows(2, 2, 3, prompts=2) == 2 * 5
    with pytest.raises(TypeError, match="cache and causal must be bools"):
        cx.beam_attention_entries(2, 2, 3, cache=1)


def test_a_heap_beats_a_sort_on_a_wide_vocabulary():
    B, N, T = 4, 2000, 3
    st = beam_search(SyntheticLM(N, seed=0, dtype=np.float64), B, T, bos=0, trace=True)[0].stats
    heap = sum(cx.counted_heap_topk([c[2] for c in s["candidates"]], B)[1] for s in st.trace)
    sort = sum(cx.counted_merge_sort([c[2] for c in s["candidates"]])[1] for s in st.trace)
    assert heap < cx.beam_heap_comparisons_bound(B, N, T) < sort


@pytest.mark.parametrize("call,exc,match", [
    (lambda: cx.greedy_candidates(0, 3), ValueError, "N must be a positive int"),
    (lambda: cx.exhaustive_terms(3, True), ValueError, "T must be a positive int"),
    (lambda: cx.heap_topk_comparisons_bound(3, 4), ValueError, "k must be <= n=3"),
    (lambda: cx.full_table_bytes(3, 2, itemsize=0), ValueError, "itemsize"),
    (lambda: cx.counted_heap_topk([1.0, 2.0], 3), ValueError, "k must be <="),
    (lambda: cx.counted_merge_sort([]), ValueError, "must not be empty"),
    (lambda: cx.counted_heap_topk([1.0, float("nan")], 1), ValueError, "NaN"),
    (lambda: cx.beam_space_elements(2, 3, 4, prompts=0), ValueError, "prompts"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
