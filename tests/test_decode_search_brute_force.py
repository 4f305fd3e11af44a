"""fastdl.decode searches against brute force on small random language models.

exhaustive_search and exact_search equal enumerating every sequence; beam_search equals
plain-Python references of beam search at every width (plain, and Hugging Face's current
``_beam_search`` with eos); width 1 is greedy; and the stats record of each search.
"""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdl.decode import beam_search, exact_search, exhaustive_search, greedy

from _decode_search_helpers import (HYP, NEG_INF, TableLM, lps, ref_beam, ref_beam_eos, small_lms,
                                    toks)


def brute_force(lm, N, T, eos=()):
    """Every sequence of T tokens, or ending in eos, with its log-prob: sorted best
    first, ties in token order."""
    eos = set(eos)
    out = []

    def rec(prefix, s):
        for j in range(N):
            lp = float(lm.logp((lm.bos,) + prefix)[j])
            if lp == NEG_INF:
                continue
            seq, sc = prefix + (j,), s + lp
            if j in eos or len(seq) == T:
                out.append((seq, sc))
            else:
                rec(seq, sc)

    rec((), 0.0)
    out.sort(key=lambda e: (-e[1], e[0]))
    return out


# ---------------------------------------------------------------- against brute force

@HYP
@given(small_lms(max_seqs=256))
def test_exhaustive_equals_brute_force(case):
    N, T, seed = case
    lm = TableLM(N, seed)
    bf = brute_force(lm, N, T)
    got = exhaustive_search(lm, T, bos=0, top=N ** T)
    assert toks(got) == [s for s, _ in bf]
    assert lps(got) == [v for _, v in bf]
    assert [h.score for h in got] == lps(got)


@HYP
@given(small_lms(max_seqs=256, min_N=2), st.integers(1, 3), st.sampled_from([0.0, 0.3]))
def test_exhaustive_and_exact_with_eos_equal_brute_force(case, n_eos, inf_frac):
    N, T, seed = case
    eos = list(range(1, min(N, 1 + n_eos)))
    lm = TableLM(N, seed, inf_frac=inf_frac)
    bf = brute_force(lm, N, T, eos)
    got = exhaustive_search(lm, T, bos=0, eos=eos, top=len(bf) + 5)   # finite ones only
    assert toks(got) == [s for s, _ in bf] and lps(got) == [v for _, v in bf]
    ex = exact_search(lm, T, bos=0, eos=eos)
    assert ex[0].tokens == bf[0][0] and ex[0].log_prob == bf[0][1]
    for h in got:
        assert len(h.tokens) == T or h.tokens[-1] in eos
        assert all(t not in eos for t in h.tokens[:-1])


@HYP
@given(small_lms(max_seqs=1296), st.sampled_from([None, 3]), st.sampled_from([0.0, 0.4]))
def test_exact_equals_exhaustive(case, levels, inf_frac):
    N, T, seed = case
    lm = TableLM(N, seed, levels=levels, inf_frac=inf_frac)
    ex = exact_search(lm, T, bos=0)
    top = exhaustive_search(lm, T, bos=0, top=N ** T)
    assert ex[0].log_prob == top[0].log_prob
    best = {h.tokens for h in top if h.log_prob == top[0].log_prob}
    assert ex[0].tokens in best
    if len(best) == 1:
        assert ex[0].tokens == top[0].tokens
    assert ex[0].log_prob == lm.seq_logp(ex[0].tokens)
    st_ = ex[0].stats
    assert st_.heap_pushes > 0 and st_.heap_pops > 0 and st_.heap_pops <= st_.heap_pushes
    assert 1 <= st_.lm_calls <= sum(N ** t for t in range(T))


@HYP
@given(small_lms(max_seqs=1296))
def test_wide_beam_finds_optimum(case):
    N, T, seed = case
    lm = TableLM(N, seed)
    best = exhaustive_search(lm, T, bos=0)[0]
    B = N ** (T - 1)
    got = beam_search(lm, B, T, bos=0)
    assert got[0].tokens == best.tokens and got[0].log_prob == best.log_prob


@settings(max_examples=15, deadline=None)
@given(small_lms(max_seqs=64), st.sampled_from([None, 2, 3]), st.sampled_from([0.0, 0.3]))
def test_beam_equals_reference_every_width(case, levels, inf_frac):
    N, T, seed = case
    lm = TableLM(N, seed, levels=levels, inf_frac=inf_frac)
    for B in range(1, N ** T + 1):
        want = ref_beam(lm, N, B, T)
        got = beam_search(lm, B, T, bos=0)
        assert toks(got) == [s for s, _ in want], B
        assert lps(got) == [v for _, v in want], B
        assert len(got) == min(B, len(want))
    full = beam_search(lm, N ** T, T, bos=0)
    bf = brute_force(lm, N, T)
    assert lps(full) == [v for _, v in bf]


@HYP
@given(small_lms(max_seqs=1296), st.sampled_from([None, 2]))
def test_beam_width_1_is_greedy(case, levels):
    N, T, seed = case
    lm = TableLM(N, seed, levels=levels)
    g, b = greedy(lm, T, bos=0), beam_search(lm, 1, T, bos=0)
    assert toks(g) == toks(b) and lps(g) == lps(b)
    # greedy: the argmax (lowest id on ties) at every step
    seq = ()
    for _ in range(T):
        seq += (int(np.argmax(lm.logp((0,) + seq))),)
    assert g[0].tokens == seq and g[0].log_prob == lm.seq_logp(seq)


@HYP
@given(small_lms(max_seqs=256, min_N=2), st.integers(1, 2), st.integers(1, 6),
       st.sampled_from([0.0, 0.7, 1.0, -0.5, 2.0]), st.sampled_from([True, False, "never"]),
       st.integers(0, 2), st.data())
def test_beam_with_eos_equals_hf_reference(case, n_eos, B, alpha, early, min_len, data):
    N, T, seed = case
    eos = list(range(1, min(N, 1 + n_eos)))
    B = min(B, N ** T)
    nret = data.draw(st.integers(1, B))
    lm = TableLM(N, seed)
    want = ref_beam_eos(lm, N, B, T, eos, alpha, early, nret, min_len)
    got = beam_search(lm, B, T, bos=0, eos=eos, length_penalty=alpha, early_stopping=early,
                      num_return=nret, min_len=min_len)
    assert [(h.tokens, h.log_prob) for h in got] == [(s, lp) for s, lp, _ in want]
    assert [h.score for h in got] == pytest.approx([sc for *_, sc in want], rel=1e-12)
    for h in got:
        assert len(h.tokens) == T or h.tokens[-1] in eos
        assert all(t not in eos for t in h.tokens[:-1])
        if h.tokens[-1] in eos:
            assert len(h.tokens) - 1 >= min_len
        assert h.log_prob == lm.seq_logp(h.tokens)
        assert h.score == pytest.approx(h.log_prob / len(h.tokens) ** alpha, rel=1e-12)


# ---------------------------------------------------------------- stats

@HYP
@given(small_lms(max_seqs=1296), st.integers(1, 8))
def test_beam_stats(case, B):
    N, T, seed = case
    B = min(B, N ** T)
    lm = TableLM(N, seed)
    hyps = beam_search(lm, B, T, bos=0)
    s = hyps[0].stats
    rows = [min(B, N ** (t - 1)) for t in range(1, T + 1)]      # B_t: live rows at step t
    kept = [min(B, N ** t) for t in range(1, T + 1)]
    assert s.algorithm == "beam_search"
    assert s.lm_calls == T == s.steps == len(lm.calls)
    assert s.candidates_scored == sum(r * N for r in rows)
    assert s.hypothesis_tokens == sum(kept)
    assert s.prefix_copy_tokens == sum(k * t for t, k in enumerate(kept, 1))
    assert 0 <= s.lm_time_s <= s.total_time_s
    assert s.kernel_time_s >= 0 and s.search_time_s >= 0
    assert s.dead_ends == 0
    assert all(h.stats is s for h in hyps)


def test_stats_other_searches():
    lm = TableLM(3, 2)
    g = greedy(lm, 4, bos=0)[0].stats
    assert g.algorithm == "greedy" and g.lm_calls == 4
    assert g.candidates_scored == 4 * 3 and g.hypothesis_tokens == 4
    assert g.prefix_copy_tokens == 1 + 2 + 3 + 4
    x = exhaustive_search(lm, 4, bos=0)[0].stats
    assert x.algorithm == "exhaustive_search" and x.lm_calls == 4
    assert x.candidates_scored == sum(3 ** t * 3 for t in range(4))
    assert x.hypothesis_tokens == sum(3 ** t for t in range(1, 5))
    e = exact_search(lm, 4, bos=0)[0].stats
    assert e.algorithm == "exact_search"
    assert e.heap_pushes > 0 and e.heap_pops > 0
    assert e.candidates_scored == 3 * e.lm_calls and e.steps == e.lm_calls
    assert e.heap_pushes == 1 + 3 * e.lm_calls
    for s in (g, x, e):
        assert 0 <= s.lm_time_s <= s.total_time_s


def test_lm_time_is_measured():
    inner = TableLM(3, 1)

    def slow(p):
        time.sleep(0.005)
        return inner(p)
    for res in (beam_search(slow, 2, 3, bos=0), exact_search(slow, 3, bos=0)):
        s = res[0].stats
        assert s.lm_time_s >= 0.005 * s.lm_calls * 0.9
        assert s.lm_time_s <= s.total_time_s
        assert s.search_time_s == pytest.approx(s.total_time_s - s.lm_time_s)
