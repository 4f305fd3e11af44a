"""Searches from prompts and batches of prompts: forms, padding, protocols, per-prompt results."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdl import complexity
from fastdl.decode import (Logits, beam_search, exact_search, exhaustive_search, examples, greedy,
                           sample)
from fastdl.decode.prompts import prompts
from fastdl.testing._lm import RandomLM

N = 12


def _lm():
    return examples.SyntheticLM(N, table_rows=29, seed=3)


class Callable:
    """SyntheticLM through the callable protocol only (full prefixes, with the mask)."""

    normalized = False
    vocab_size = N

    def __init__(self):
        self.lm, self.calls = _lm(), []

    def __call__(self, prefixes, attention_mask=None):
        self.calls.append((prefixes.shape, attention_mask is not None))
        return self.lm(prefixes, attention_mask)


RAGGED = [[0, 3, 4, 5], [0, 7], [0, 2, 9, 9, 1], [0]]


def test_prompt_forms():
    p = prompts(RAGGED, pad=11)
    assert p.ids.shape == (4, 5) and p.lengths.tolist() == [4, 2, 5, 1]
    assert p.ids[1].tolist() == [11, 11, 11, 0, 7]
    assert p.mask[1].tolist() == [0, 0, 0, 1, 1]
    assert p.row(2).tolist() == [0, 2, 9, 9, 1] and not p.single
    same = prompts(np.array([[1, 2], [3, 4]]))
    assert same.mask is None and same.ids.dtype == np.int64
    one = prompts([5, 6, 7])
    assert one.single and one.ids.tolist() == [[5, 6, 7]]
    start = prompts(None, bos=0)
    assert start.single and start.ids.tolist() == [[0]]
    m = prompts(p.ids, p.mask)
    assert (m.ids == p.ids).all() and (m.mask == p.mask).all()
    full = prompts(p.ids, np.ones_like(p.ids))
    assert full.mask is None                              # no padding: no mask


@pytest.mark.parametrize("args, match", [
    (([[1, 2], [3]],), "pad_token_id"),
    ((np.zeros((2, 3), int), np.ones((2, 2), int)), r"attention_mask must have the shape"),
    ((np.zeros((1, 3), int), np.array([[1, 0, 1]])), "padding must be on the left"),
    ((np.zeros((1, 3), int), np.array([[1, 1, 0]])), "padding must be on the left"),
    ((np.zeros((1, 3), int), np.array([[0, 2, 1]])), "only 0"),
    ((np.zeros((2, 2), int), np.array([[1, 1], [0, 0]])), "row 1 has no token"),
    ((np.zeros((2, 0), int),), "at least one prompt"),
    (([[1], []],), r"input_ids\[1\] is empty"),
    ((np.array([[-1, 2]]),), "token ids >= 0"),
    ((np.zeros((2, 2, 2), int),), "2-D"),
    ((None, np.ones((1, 1))), "without input_ids"),
])
def test_prompt_errors(args, match):
    with pytest.raises(ValueError, match=match):
        prompts(*args)


def test_prompt_type_errors():
    with pytest.raises(TypeError, match="integer token ids"):
        prompts(np.array([[0.5, 1.0]]))
    with pytest.raises(TypeError, match="integer token ids"):
        prompts(np.array([["a"]]))


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("eos", [None, 1])
def test_batch_equals_each_prompt(B, eos):
    kw = dict(eos=eos, length_penalty=0.7, early_stopping=False, no_repeat_ngram_size=2)
    lm = _lm()
    padded = prompts(RAGGED, pad=11)
    batch = beam_search(lm, B, 6, prompt=padded.ids, attention_mask=padded.mask, **kw)
    assert len(batch) == len(RAGGED)
    for row, got in zip(RAGGED, batch):
        alone = beam_search(_lm(), B, 6, prompt=row, **kw)
        assert [(h.tokens, h.log_prob, h.score) for h in got] == \
            [(h.tokens, h.log_prob, h.score) for h in alone]
    # one LM call per step for the whole batch
    stats = batch[0][0].stats
    assert stats.prompts == 4 and stats.lm_calls == stats.steps


def test_callable_and_stateful_agree_on_padded_prompts():
    padded = prompts(RAGGED, pad=11)
    c = Callable()
    a = beam_search(c, 3, 5, prompt=padded.ids, attention_mask=padded.mask, eos=1)
    b = beam_search(_lm(), 3, 5, prompt=padded.ids, attention_mask=padded.mask, eos=1)
    assert [[(h.tokens, h.log_prob) for h in r] for r in a] == \
        [[(h.tokens, h.log_prob) for h in r] for r in b]
    assert all(masked for _, masked in c.calls)           # padded rows always came with a mask
    assert c.calls[0][0] == (4, 5)                         # step 1: the prompts themselves


def test_padding_needs_a_mask_parameter_or_prefill():
    padded = prompts(RAGGED, pad=11)
    inner = _lm()
    with pytest.raises(ValueError, match="attention_mask= parameter"):
        greedy(Logits(lambda p: inner(p)), 3, prompt=padded.ids, attention_mask=padded.mask)
    with pytest.raises(ValueError, match="no prefill"):
        greedy(RandomLM(N), 3, prompt=padded.ids, attention_mask=padded.mask)
    # equal lengths need neither: the prompt columns are stepped through
    lm = RandomLM(N)
    out = greedy(lm, 3, prompt=[[0, 4, 5], [0, 6, 7]])
    assert len(out) == 2 and [k for k, _ in lm.log][:4] == ["initial_state", "step", "step", "step"]
    assert out[0][0].tokens == greedy(RandomLM(N), 3, prompt=[0, 4, 5])[0].tokens


def test_bos_and_prompt():
    lm = _lm()
    a = beam_search(lm, 2, 4, bos=0)
    b = beam_search(lm, 2, 4, prompt=[0])
    assert [(h.tokens, h.log_prob) for h in a] == [(h.tokens, h.log_prob) for h in b]
    with pytest.raises(ValueError, match="give bos"):
        beam_search(lm, 2, 4)
    with pytest.raises(ValueError, match="not both"):
        beam_search(lm, 2, 4, bos=0, prompt=[0])
    with pytest.raises(ValueError, match=r"prompt must hold token ids in \[0, 12\)"):
        greedy(lm, 2, prompt=[0, 12])


@pytest.mark.parametrize("search", ["greedy", "exact", "exhaustive", "sample"])
def test_other_searches_take_batches(search):
    from fastdl.decode import TreeLM
    tree = TreeLM({"x": (-0.5, {"y": (-0.3, {".": -0.1}), ".": -1.0}),
                   "z": (-1.0, {".": -0.2, "y": -2.0})}, eos=".")
    rows = [[tree.bos], [tree.bos] + tree.encode("x"), [tree.bos] + tree.encode("x y")]
    run = {"greedy": lambda lm, p: greedy(lm, 3, prompt=p, eos=lm.eos),
           "exact": lambda lm, p: exact_search(lm, 3, prompt=p, eos=lm.eos),
           "exhaustive": lambda lm, p: exhaustive_search(lm, 3, prompt=p, top=2, eos=lm.eos),
           "sample": lambda lm, p: sample(lm, 3, prompt=p, seed=1, num_samples=3, eos=lm.eos)
           }[search]
    batch = run(tree, rows)
    assert len(batch) == 3
    if search != "sample":
        for r, got in zip(rows, batch):
            assert [(h.tokens, h.log_prob) for h in got] == \
                [(h.tokens, h.log_prob) for h in run(tree, r)]
    # after "x y" only the end token can follow
    assert all(h.tokens == (tree.eos,) for h in batch[2])
    assert all(h.tokens[-1] == tree.eos for hs in batch for h in hs)


def test_tree_prefill_matches_its_callable():
    tree = examples.shapes_lm()
    padded = prompts([[0], [0] + tree.encode("a blue")], pad=0)
    lp_call = tree(padded.ids, padded.mask)
    lp_pre, node = tree.prefill(padded.ids, padded.mask)
    assert (lp_call == lp_pre).all()
    assert (lp_call[1] == tree(np.array([[0] + tree.encode("a blue")]))[0]).all()


def test_stats_count_every_prompt():
    B, T, G = 3, 5, 4
    lm = _lm()
    out = beam_search(lm, B, T, prompt=np.zeros((G, 2), np.int64) + [0, 5])
    st = out[0][0].stats
    assert st.candidates_scored == G * complexity.beam_candidates(B, N, T)
    assert st.hypothesis_tokens == G * complexity.beam_backpointer_tokens(B, N, T)
    assert st.padded_rows == 0 and st.lm_calls == T and st.prompts == G


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(0, N - 1), min_size=1, max_size=4), min_size=1, max_size=4),
       st.integers(1, 4), st.sampled_from([None, 1, [1, 2]]),
       st.sampled_from([True, False, "never"]))
def test_batch_equals_each_prompt_random(rows, B, eos, early):
    padded = prompts(rows, pad=0)
    kw = dict(eos=eos, early_stopping=early, length_penalty=0.5)
    batch = beam_search(_lm(), B, 4, prompt=padded.ids, attention_mask=padded.mask, **kw)
    for row, got in zip(rows, batch):
        alone = beam_search(_lm(), B, 4, prompt=row, **kw)
        assert [(h.tokens, h.score) for h in got] == [(h.tokens, h.score) for h in alone]
