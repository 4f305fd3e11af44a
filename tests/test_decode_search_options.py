"""fastdl.decode beam-search options: eos kept and ending a hypothesis, length penalty,
num_return, early_stopping (True / False / "never" and truthy values), min_len and
no_repeat_ngram_size.
"""

import math

import numpy as np
import pytest

from fastdl.decode import TreeLM, beam_search, exact_search, exhaustive_search, greedy

from _decode_search_helpers import TableLM, _TreeAdapter, lps, ref_beam_eos, toks


# ---------------------------------------------------------------- eos, penalties, options

def _eos_lm():
    """Token 1 = eos; after ⟨BOS⟩: eos 0.4, 'x' (2) 0.6; after x: eos .5, y (3) .5; after
    x y: eos 1.0 (a pruned tree, hand checked)."""
    from fastdl.decode import TreeLM
    return TreeLM({"x": (math.log(0.6), {"y": (math.log(0.5), {"</s>": 0.0}),
                                          "</s>": math.log(0.5)}),
                   "</s>": math.log(0.4)}, eos="</s>")


def test_eos_kept_and_ends_hypothesis():
    lm = _eos_lm()
    assert lm.eos == 1 and lm.vocab[:2] == ["<BOS>", "</s>"]
    hyps = beam_search(lm, 3, 5, bos=lm.bos, eos=lm.eos)
    assert [h.tokens for h in hyps] == [(1,), (2, 1), (2, 3, 1)]
    assert lps(hyps) == pytest.approx([math.log(0.4), math.log(0.3), math.log(0.3)])
    assert all(lm.bos not in h.tokens for h in hyps)
    g = greedy(lm, 5, bos=0, eos=1)[0]
    assert g.tokens == (2, 1) and g.log_prob == pytest.approx(math.log(0.3))
    assert exact_search(lm, 5, bos=0, eos=1)[0].tokens == (1,)
    assert [h.tokens for h in exhaustive_search(lm, 5, bos=0, eos=1, top=3)] == \
        [(1,), (2, 1), (2, 3, 1)]


def test_length_penalty_orders_by_normalized_score():
    lm = _eos_lm()
    for alpha in (0.0, 0.5, 1.0, 2.0, -1.0):
        hyps = beam_search(lm, 3, 5, bos=0, eos=1, length_penalty=alpha, early_stopping=False)
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / len(h.tokens) ** alpha)
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
    # α = 2: the long hypotheses win (log .3 / 9 > log .4 / 1)
    hyps = beam_search(lm, 3, 5, bos=0, eos=1, length_penalty=2.0, early_stopping=False)
    assert hyps[0].tokens == (2, 3, 1) and hyps[-1].tokens == (1,)


def test_num_return():
    lm = TableLM(4, 11)
    full = beam_search(lm, 4, 3, bos=0)
    assert len(full) == 4                                      # default: beam_width
    for n in range(1, 5):
        got = beam_search(lm, 4, 3, bos=0, num_return=n)
        assert toks(got) == toks(full)[:n] and lps(got) == lps(full)[:n]
    assert [h.tokens for h in exhaustive_search(lm, 3, bos=0, top=4)][0] == \
        exhaustive_search(lm, 3, bos=0)[0].tokens


def _late_winner_lm():
    """eos (1) is cheap early, but a long path is much better per token."""
    from fastdl.decode import TreeLM
    e = math.log
    return TreeLM({
        "</s>": e(0.30), "q": e(0.05),
        "a": (e(0.35), {"</s>": e(0.5), "b": (e(0.5), {"</s>": e(0.9), "c": e(0.1)})}),
        "z": (e(0.30), {"</s>": e(0.45), "y": (e(0.55), {"</s>": e(0.99), "w": e(0.01)})}),
    }, eos="</s>")


def test_early_stopping_variants():
    lm = _late_winner_lm()
    kw = dict(bos=0, eos=1, length_penalty=1.0)
    res = {es: beam_search(lm, 2, 3, early_stopping=es, **kw) for es in (True, False, "never")}
    # True: stops as soon as 2 hypotheses finished (step 2); nothing longer than 2 tokens
    assert all(len(h.tokens) <= 2 for h in res[True])
    assert res[True][0].stats.steps == 2
    # False / "never" go on and find the 3-token hypotheses that win under α = 1
    assert max(len(h.tokens) for h in res["never"]) == 3
    assert res["never"][0].score > res[True][0].score
    assert res["never"][0].stats.steps >= res[False][0].stats.steps
    for es in (True, False, "never"):
        want = ref_beam_eos(_TreeAdapter(lm), lm.vocab_size, 2, 3, [1], 1.0, es, 2)
        assert [(h.tokens, h.log_prob) for h in res[es]] == [(s, lp) for s, lp, _ in want]
    assert [h.tokens for h in res[True]] != [h.tokens for h in res["never"]]


@pytest.mark.parametrize("truthy", [1, np.True_], ids=["int1", "np_True"])
def test_early_stopping_truthy_values(truthy):
    lm = _late_winner_lm()
    kw = dict(bos=0, eos=1, length_penalty=1.0)
    want = toks(beam_search(lm, 2, 3, early_stopping=True, **kw))
    assert want != toks(beam_search(lm, 2, 3, early_stopping=False, **kw))
    try:
        got = beam_search(lm, 2, 3, early_stopping=truthy, **kw)
    except ValueError as exc:
        assert "early_stopping" in str(exc)
    else:
        assert toks(got) == want


def test_early_stopping_false_and_never_differ():
    # find a random LM where False and "never" (α > 0) give different answers, and check
    # both against the reference
    seen = False
    for seed in range(60):
        lm = TableLM(4, seed)
        kw = dict(bos=0, eos=[1], length_penalty=1.5)
        a = beam_search(lm, 2, 4, early_stopping=False, **kw)
        b = beam_search(lm, 2, 4, early_stopping="never", **kw)
        for es, got in ((False, a), ("never", b)):
            want = ref_beam_eos(lm, 4, 2, 4, [1], 1.5, es, 2)
            assert [(h.tokens, h.log_prob) for h in got] == [(s, lp) for s, lp, _ in want]
        if toks(a) != toks(b):
            seen = True
            assert b[0].stats.steps >= a[0].stats.steps
            assert b[0].score >= a[0].score
    assert seen


@pytest.mark.parametrize("min_len", [0, 1, 2, 3])
def test_min_len(min_len):
    lm = _eos_lm()
    if min_len >= 3:            # the tree's only 4-token continuation needs eos as 3rd token
        with pytest.raises(ValueError, match="-inf"):
            beam_search(lm, 3, 4, bos=0, eos=1, min_len=min_len)
        hyps = []
    else:
        hyps = beam_search(lm, 3, 4, bos=0, eos=1, min_len=min_len)
        assert hyps
    for h in hyps:
        if h.tokens[-1] == 1:
            assert len(h.tokens) - 1 >= min_len
    if min_len == 0:
        assert (1,) in toks(hyps)
    if min_len >= 1:
        assert (1,) not in toks(hyps)
    rnd = TableLM(3, 4)
    for h in beam_search(rnd, 4, 4, bos=0, eos=2, min_len=min_len):
        assert 2 not in h.tokens[:min_len]


def _ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_no_repeat_ngram(n, seed):
    N, T = 4 if n > 1 else 6, 5
    lm = TableLM(N, seed, levels=2)                   # ties make repeats likely without the ban
    hyps = beam_search(lm, 3, T, bos=0, no_repeat_ngram_size=n)
    assert hyps
    for h in hyps:
        grams = _ngrams((0,) + h.tokens, n)
        assert len(grams) == len(set(grams)), h.tokens
        assert h.log_prob == lm.seq_logp(h.tokens)
    plain = beam_search(lm, 3, T, bos=0)
    if any(len(set(_ngrams((0,) + h.tokens, n))) < len(_ngrams((0,) + h.tokens, n))
           for h in plain):
        assert toks(plain) != toks(hyps)


def test_no_repeat_ngram_changes_result():
    # a model that loves repeating token 1
    class Rep:
        vocab_size = 3

        def __call__(self, p):
            out = np.log(np.tile([0.1, 0.8, 0.1], (len(p), 1)))
            return out
    plain = beam_search(Rep(), 1, 4, bos=0)[0]
    assert plain.tokens == (1, 1, 1, 1)
    ban = beam_search(Rep(), 1, 4, bos=0, no_repeat_ngram_size=2)[0]
    assert ban.tokens == (1, 1, 0, 1) or len(set(_ngrams((0,) + ban.tokens, 2))) == 4
    assert ban.tokens != plain.tokens
