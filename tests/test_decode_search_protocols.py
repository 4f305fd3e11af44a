"""fastdl.decode searches under both language-model protocols (callable on prefixes and
stateful with reorder), the ``Logits`` wrapper, model outputs that are never modified, and
argument errors of every search.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastdl.decode import Logits, beam_search, exact_search, exhaustive_search, greedy

from _decode_search_helpers import HYP, TableLM, callable_only, lps, ref_beam, small_lms, toks


# ---------------------------------------------------------------- a random LM (both protocols)

def both(lm_factory):
    """(stateful LM, callable wrapper of a fresh LM) built by ``lm_factory``."""
    a, b = lm_factory(), lm_factory()
    return a, callable_only(b), b


# ---------------------------------------------------------------- protocols

SEARCHES = {
    "greedy": lambda lm, T, **kw: greedy(lm, T, bos=0, **kw),
    "beam": lambda lm, T, **kw: beam_search(lm, 3, T, bos=0, **kw),
    "beam_opts": lambda lm, T, **kw: beam_search(lm, 3, T, bos=0, min_len=1,
                                                 no_repeat_ngram_size=2, length_penalty=1.0,
                                                 early_stopping=False, **kw),
    "exhaustive": lambda lm, T, **kw: exhaustive_search(lm, T, bos=0, top=5, **kw),
    "exact": lambda lm, T, **kw: exact_search(lm, T, bos=0, **kw),
}


@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize("eos", [None, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stateful_equals_callable(name, eos, seed):
    search = SEARCHES[name]
    stateful, wrapped, inner = both(lambda: TableLM(4, seed, inf_frac=0.2))
    a, b = search(stateful, 4, eos=eos), search(wrapped, 4, eos=eos)
    assert toks(a) == toks(b) and lps(a) == lps(b) and [h.score for h in a] == [h.score for h in b]
    sa, sb = a[0].stats, b[0].stats
    assert sa.lm_calls == sb.lm_calls == len(stateful.calls) == len(inner.calls)
    for f in ("steps", "candidates_scored", "heap_pushes", "heap_pops", "hypothesis_tokens"):
        assert getattr(sa, f) == getattr(sb, f), f
    assert inner.reorders == [] and inner.inits == []        # the wrapper is only called
    assert stateful.inits
    if name != "exact":      # (exact search branches states with reorder(state, [0]))
        # one reorder per step after the first, except where every row stays in place
        assert len(stateful.reorders) <= max(sa.lm_calls - 1, 0)
        assert all(list(r) != list(range(len(r))) for r in stateful.reorders)
    if name not in ("greedy", "sample") and sa.lm_calls > 1:
        assert stateful.reorders


@HYP
@given(small_lms(max_seqs=256, min_N=2), st.integers(1, 5), st.booleans(),
       st.sampled_from([True, False, "never"]))
def test_protocols_agree_random(case, B, with_eos, early):
    N, T, seed = case
    B = min(B, N ** T)
    eos = 1 if with_eos else None
    stateful, wrapped, inner = both(lambda: TableLM(N, seed, inf_frac=0.2))
    kw = dict(bos=0, eos=eos, early_stopping=early, length_penalty=0.5)
    a, b = beam_search(stateful, B, T, **kw), beam_search(wrapped, B, T, **kw)
    assert [(h.tokens, h.log_prob, h.score) for h in a] == [(h.tokens, h.log_prob, h.score)
                                                            for h in b]
    assert a[0].stats.lm_calls == b[0].stats.lm_calls == len(inner.calls)
    assert len(stateful.reorders) <= max(a[0].stats.lm_calls - 1, 0)
    assert all(list(r) != list(range(len(r))) for r in stateful.reorders)   # no idle reorders
    x, y = exact_search(stateful, T, bos=0, eos=eos), exact_search(wrapped, T, bos=0, eos=eos)
    assert (x[0].tokens, x[0].log_prob, x[0].stats.lm_calls) == \
        (y[0].tokens, y[0].log_prob, y[0].stats.lm_calls)


def test_reorder_follows_beams():
    T, B, N = 4, 3, 5
    lm = TableLM(N, 7)
    hyps = beam_search(lm, B, T, bos=0)
    assert lm.inits == [1]                                  # one ⟨BOS⟩ copy
    assert [s for s in lm.calls] == [(1,), (3,), (3,), (3,)]
    assert len(lm.reorders) == T - 1                        # after every step but the last
    assert [len(r) for r in lm.reorders] == [3, 3, 3]
    assert all(r.dtype == np.int64 for r in lm.reorders)
    assert (lm.reorders[0] == 0).all()                      # all children of ⟨BOS⟩
    # the indices are the parents' rows in the reference order
    beams = [((), 0.0)]
    for t in range(T - 1):
        new = ref_beam(lm, N, B, t + 1)
        parents = [[p for p, _ in beams].index(seq[:-1]) for seq, _ in new]
        assert lm.reorders[t].tolist() == parents
        beams = new
    # a model whose reorder ignores the indices goes wrong: reorder is what keeps it right
    broken = TableLM(N, 7)
    broken.reorder = lambda state, idx: [state[0]] * len(idx)
    assert toks(beam_search(broken, B, T, bos=0)) != toks(hyps)


def test_exact_search_branches_state():
    lm = TableLM(3, 5)
    a = exact_search(lm, 4, bos=0)
    b = exact_search(callable_only(TableLM(3, 5)), 4, bos=0)
    assert a[0].tokens == b[0].tokens
    assert all(r.tolist() == [0] for r in lm.reorders)      # branch: reorder(state, [0])


@pytest.mark.parametrize("name", [n for n in SEARCHES if n != "beam_opts"])
def test_logits_wrapper_equals_normalized(name):
    search = SEARCHES[name]
    lp_lm = TableLM(5, 3)
    logit_lm = TableLM(5, 3, logits=True)                   # normalized = False on the object
    raw = TableLM(5, 3, logits=True)
    del raw.normalized                                       # ... or wrapped in Logits
    wrapped = Logits(callable_only(raw))
    assert not hasattr(wrapped, "step")
    a, b, c = search(lp_lm, 3), search(logit_lm, 3), search(wrapped, 3)
    assert toks(a) == toks(b) == toks(c)
    assert lps(b) == pytest.approx(lps(a), rel=1e-9) and lps(c) == pytest.approx(lps(a), rel=1e-9)
    stateful = Logits(TableLM(5, 3, logits=True))
    d = search(stateful, 3)
    assert toks(d) == toks(a) and stateful.lm.inits           # Logits keeps the protocol


@pytest.mark.parametrize("kw", [dict(no_repeat_ngram_size=2), dict(min_len=2, eos=1)],
                         ids=["no_repeat", "min_len"])
def test_logits_model_with_bans_scores_model_log_probs(kw):
    logit_lm, lp_lm = TableLM(5, 3, logits=True), TableLM(5, 3)
    a = beam_search(logit_lm, 3, 3, bos=0, **kw)
    b = beam_search(lp_lm, 3, 3, bos=0, **kw)
    for h in a:
        assert h.log_prob == pytest.approx(logit_lm.seq_logp(h.tokens), rel=1e-9)
    assert toks(a) == toks(b)


# ---------------------------------------------------------------- inputs never modified

@pytest.mark.parametrize("name", list(SEARCHES))
@pytest.mark.parametrize("stateful", [True, False])
def test_model_outputs_not_modified(name, stateful):
    lm = TableLM(4, 9, inf_frac=0.2)
    SEARCHES[name](lm if stateful else callable_only(lm), 3, eos=1)
    assert lm.returned
    for arr, copy in lm.returned:
        np.testing.assert_array_equal(arr, copy)


def test_read_only_model_outputs_and_mutating_model():
    class Mut(TableLM):
        """Returns read-only rows, and scribbles over the arrays it is given."""

        def _out(self, prefixes):
            out = super()._out(prefixes)
            out.setflags(write=False)
            return out

        def __call__(self, prefixes):
            out = super().__call__(prefixes)
            prefixes[...] = -7
            return out

        def step(self, tokens, state):
            out = super().step(tokens, state)
            tokens[...] = -7
            return out

    for name, search in SEARCHES.items():
        want = search(TableLM(4, 5), 3, eos=1)
        for lm in (Mut(4, 5), callable_only(Mut(4, 5))):
            got = search(lm, 3, eos=1)
            assert toks(got) == toks(want) and lps(got) == lps(want), name


# ---------------------------------------------------------------- argument errors

def test_beam_width_errors():
    lm = TableLM(3, 0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(lm, 0, 2, bos=0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(lm, 10, 2, bos=0)                          # 3^2 = 9 sequences
    assert len(beam_search(lm, 9, 2, bos=0)) == 9
    with pytest.raises(TypeError, match="beam_width"):
        beam_search(lm, 2.0, 2, bos=0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(callable_only(lm), 4, 1, bos=0)             # N learned at the first call


@pytest.mark.parametrize("search", [
    lambda lm, T: greedy(lm, T, bos=0), lambda lm, T: beam_search(lm, 1, T, bos=0),
    lambda lm, T: exhaustive_search(lm, T, bos=0), lambda lm, T: exact_search(lm, T, bos=0)])
def test_max_len_errors(search):
    with pytest.raises(ValueError, match="max_len"):
        search(TableLM(3, 0), 0)
    with pytest.raises(TypeError, match="max_len"):
        search(TableLM(3, 0), 2.5)


@pytest.mark.parametrize("declare", [True, False])
@pytest.mark.parametrize("search", [
    lambda lm, **kw: greedy(lm, 2, **kw), lambda lm, **kw: beam_search(lm, 2, 2, **kw),
    lambda lm, **kw: exhaustive_search(lm, 2, **kw), lambda lm, **kw: exact_search(lm, 2, **kw)])
def test_bos_eos_outside_vocabulary(declare, search):
    lm = TableLM(4, 0, declare=declare)
    calls = []

    def model(p):
        calls.append(1)
        return np.tile(lm.logp((0,)), (len(p), 1))
    target = lm if declare else model
    with pytest.raises(ValueError, match="bos"):
        search(target, bos=4)
    with pytest.raises(ValueError, match="bos"):
        search(target, bos=-1)
    with pytest.raises(ValueError, match="eos"):
        search(target, bos=0, eos=4)
    with pytest.raises(ValueError, match="eos"):
        search(target, bos=0, eos=[1, 9])
    with pytest.raises(TypeError, match="bos"):
        search(target, bos="a")
    with pytest.raises(TypeError, match="bos"):
        search(target, bos=True)
    if declare:
        assert lm.calls == []                                  # caught before any call
    else:
        assert len(calls) == 3          # ... else at the first call (bos=4, eos=4, eos=[1, 9])


def test_beam_option_errors():
    lm = TableLM(3, 0)
    with pytest.raises(ValueError, match="num_return"):
        beam_search(lm, 2, 3, bos=0, num_return=3)
    with pytest.raises(ValueError, match="num_return"):
        beam_search(lm, 2, 3, bos=0, num_return=0)
    for bad in ("always", 2, None, "True", "false"):
        with pytest.raises(ValueError, match="early_stopping"):
            beam_search(lm, 2, 3, bos=0, early_stopping=bad)
    with pytest.raises(ValueError, match="min_len"):
        beam_search(lm, 2, 3, bos=0, min_len=-1)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        beam_search(lm, 2, 3, bos=0, no_repeat_ngram_size=-1)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(lm, 2, 3, bos=0, length_penalty=math.nan)
    with pytest.raises(ValueError, match="eos"):
        beam_search(lm, 2, 3, bos=0, eos=[])


def test_exhaustive_limit_and_exact_expansions():
    lm = TableLM(4, 0)
    with pytest.raises(ValueError, match="limit"):
        exhaustive_search(lm, 3, bos=0, limit=63)
    assert exhaustive_search(lm, 3, bos=0, limit=64)
    with pytest.raises(ValueError, match="top"):
        exhaustive_search(lm, 3, bos=0, top=0)
    calls = exact_search(lm, 4, bos=0)[0].stats.lm_calls
    with pytest.raises(ValueError, match="max_expansions"):
        exact_search(lm, 4, bos=0, max_expansions=calls - 1)
    assert exact_search(lm, 4, bos=0, max_expansions=calls)
    with pytest.raises(ValueError, match="max_expansions"):
        exact_search(lm, 4, bos=0, max_expansions=0)


def test_not_a_model():
    for search in (lambda m: greedy(m, 2, bos=0), lambda m: exact_search(m, 2, bos=0)):
        with pytest.raises(TypeError, match="lm must be callable"):
            search(object())
