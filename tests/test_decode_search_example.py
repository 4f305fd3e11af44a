"""fastdl.decode searches on a small worked example: greedy, beam_search, exhaustive_search
and exact_search on the four-token "shapes" language model (including the case where a
width-2 beam loses to greedy), edge cases (a vocabulary of one, max_len=1, float32 models)
and the decoding kernels' tie / NaN / empty-input rules.
"""

import math
import warnings

import numpy as np
import pytest

from fastdl.decode import (TreeLM, beam_search, beam_topk, examples, exact_search,
                           exhaustive_search, greedy, log_softmax, topk)

from _decode_search_helpers import (TableLM, _TreeAdapter, callable_only, lps, ref_beam,
                                    ref_beam_eos, toks)


# ---------------------------------------------------------------- the document's example

@pytest.fixture
def shapes():
    return examples.shapes_lm()


def _decoded(lm, hyps):
    return [(lm.decode(h.tokens), h.log_prob) for h in hyps]


def test_doc_greedy(shapes):
    (h,) = greedy(shapes, 3, bos=shapes.bos)
    assert shapes.decode(h.tokens) == "the red rectangle"
    assert h.tokens == tuple(shapes.encode("the red rectangle"))
    assert h.log_prob == pytest.approx(-9.7) and h.score == pytest.approx(-9.7)


def test_doc_beam_width_2(shapes):
    hyps = beam_search(shapes, 2, 3, bos=shapes.bos)
    assert [shapes.decode(h.tokens) for h in hyps] == ["a blue square", "a red circle"]
    assert lps(hyps) == pytest.approx([-9.9, -10.0])
    assert [h.tokens for h in hyps] == [tuple(shapes.encode("a blue square")),
                                        tuple(shapes.encode("a red circle"))]


def test_doc_beam_loses_to_greedy_and_exact(shapes):
    g = greedy(shapes, 3, bos=shapes.bos)[0]
    b = beam_search(shapes, 2, 3, bos=shapes.bos)[0]
    e = exact_search(shapes, 3, bos=shapes.bos)[0]
    x = exhaustive_search(shapes, 3, bos=shapes.bos)[0]
    assert b.log_prob < g.log_prob
    assert shapes.decode(e.tokens) == shapes.decode(x.tokens) == "the red rectangle"
    assert e.log_prob == pytest.approx(-9.7) and x.log_prob == pytest.approx(-9.7)
    assert e.tokens == x.tokens == g.tokens


def test_finished_beams_kept_at_max_len():
    """The best sequence reaches max_len at the step where the finished list fills:
    Hugging Face's generate (and greedy) return it first; it must not be dropped."""
    L = math.log
    tree = {"a": (L(.90), {"a": L(.90), "E": L(.06), "b": L(.04)}), "E": L(.05),
            "b": (L(.05), {"a": L(.5), "E": L(.5)})}
    lm = TreeLM(tree, eos="E")
    hyps = beam_search(lm, 2, 2, bos=0, eos=1)
    assert [(lm.decode(h.tokens), h.tokens) for h in hyps] == [("a a", (2, 2)),
                                                               ("a", (2, 1))]
    assert [h.log_prob for h in hyps] == pytest.approx([L(.81), L(.9 * .06)])
    assert hyps[0].tokens == greedy(lm, 2, bos=0, eos=1)[0].tokens
    for early in (True, False, "never"):
        got = beam_search(lm, 2, 2, bos=0, eos=1, early_stopping=early)
        want = ref_beam_eos(_TreeAdapter(lm), lm.vocab_size, 2, 2, [1], 0.0, early)
        assert [(h.tokens, h.log_prob) for h in got] == [(s, lp) for s, lp, _ in want]


def test_doc_exhaustive_ranking(shapes):
    hyps = exhaustive_search(shapes, 3, bos=shapes.bos, top=5)
    assert _decoded(shapes, hyps) == [
        ("the red rectangle", pytest.approx(-9.7)), ("a blue square", pytest.approx(-9.9)),
        ("a red circle", pytest.approx(-10.0)), ("a red square", pytest.approx(-10.2)),
        ("a blue ellipse", pytest.approx(-10.3))]


def test_doc_exhaustive_never_returns_pruned_paths(shapes):
    hyps = exhaustive_search(shapes, 3, bos=shapes.bos, top=10)
    assert len(hyps) == 5                     # the tree's 5 finite 3-token paths, no -inf ones
    assert all(h.log_prob > -math.inf for h in hyps)


def test_exhaustive_no_finite_sequence_raises(shapes):
    with pytest.raises(ValueError, match="-inf"):
        exhaustive_search(shapes, 4, bos=shapes.bos)


def test_doc_trace_matches_table(shapes):
    hyps = beam_search(shapes, 2, 3, bos=shapes.bos, trace=True)
    trace = hyps[0].stats.trace
    assert [s["step"] for s in trace] == [1, 2, 3]

    def words(entries):
        return sorted((shapes.decode(p), shapes.vocab[j], round(s, 6)) for p, j, s in entries)

    def close(got, want):
        assert len(got) == len(want)
        for (gp, gt, gs), (wp, wt, ws) in zip(got, sorted(want)):
            assert (gp, gt) == (wp, wt)
            assert gs == pytest.approx(ws)

    close(words(trace[0]["candidates"]), [("", "the", -1.7), ("", "a", -2.0)])
    close(words(trace[1]["candidates"]), [("the", "green", -5.3), ("the", "red", -5.0),
                                          ("a", "blue", -4.7), ("a", "red", -4.9)])
    close(words(trace[2]["candidates"]), [("a blue", "ellipse", -10.3),
                                          ("a blue", "square", -9.9),
                                          ("a red", "circle", -10.0),
                                          ("a red", "square", -10.2)])
    sel = [(shapes.decode(p), shapes.vocab[j], s) for p, j, s in trace[1]["selected"]]
    assert [(p, w) for p, w, _ in sel] == [("a", "blue"), ("a", "red")]
    assert [s for *_, s in sel] == pytest.approx([-4.7, -4.9])
    for step in trace:
        for p, j, s in step["candidates"] + step["selected"]:
            assert isinstance(p, tuple) and isinstance(j, int) and isinstance(s, float)
    assert beam_search(shapes, 2, 3, bos=shapes.bos)[0].stats.trace is None


def test_doc_both_protocols(shapes):
    wrapped = callable_only(shapes)
    for search in (lambda lm: beam_search(lm, 2, 3, bos=0), lambda lm: greedy(lm, 3, bos=0),
                   lambda lm: exact_search(lm, 3, bos=0),
                   lambda lm: exhaustive_search(lm, 3, bos=0, top=3)):
        a, b = search(shapes), search(wrapped)
        assert toks(a) == toks(b) and lps(a) == lps(b)
        assert a[0].stats.lm_calls == b[0].stats.lm_calls


def test_doc_too_long_raises(shapes):
    # every path of the tree ends after 2 or 3 tokens: nothing of length 4 is finite
    for search in (lambda: greedy(shapes, 4, bos=0), lambda: beam_search(shapes, 2, 4, bos=0),
                   lambda: exact_search(shapes, 4, bos=0)):
        with pytest.raises(ValueError, match="-inf"):
            search()


# ---------------------------------------------------------------- edge cases

def test_vocabulary_of_one():
    lm = TableLM(1, 0)
    for res in (greedy(lm, 3, bos=0), beam_search(lm, 1, 3, bos=0),
                exhaustive_search(lm, 3, bos=0, top=5), exact_search(lm, 3, bos=0)):
        assert toks(res) == [(0, 0, 0)] and lps(res) == [0.0]
    assert toks(beam_search(lm, 1, 3, bos=0, eos=0)) == [(0,)]
    assert toks(exhaustive_search(lm, 3, bos=0, eos=0)) == [(0,)]
    assert toks(exact_search(lm, 3, bos=0, eos=0)) == [(0,)]
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(lm, 2, 3, bos=0)


def test_max_len_one():
    lm = TableLM(5, 3)
    lp = lm.logp((0,))
    order = np.argsort(-lp, kind="stable")
    assert toks(beam_search(lm, 5, 1, bos=0)) == [(int(j),) for j in order]
    assert greedy(lm, 1, bos=0)[0].tokens == (int(order[0]),)


def test_float32_model():
    lm32 = TableLM(5, 8, dtype=np.float32)
    hyps = beam_search(lm32, 3, 3, bos=0)
    want = ref_beam(lm32, 5, 3, 3)
    assert toks(hyps) == [s for s, _ in want]
    assert lps(hyps) == pytest.approx([v for _, v in want], rel=1e-5)
    assert exact_search(lm32, 3, bos=0)[0].tokens == exhaustive_search(lm32, 3, bos=0)[0].tokens


# ---------------------------------------------------------------- kernels: ties, NaN, errors

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_ties_and_nan(dtype):
    x = np.array([[1, 3, 3, np.nan, 2, np.nan, 3]], dtype)
    v, i = topk(x, 5)
    assert i.tolist() == [[3, 5, 1, 2, 6]] and i.dtype == np.int64
    assert np.isnan(v[0, :2]).all() and v[0, 2:].tolist() == [3, 3, 3] and v.dtype == dtype
    v, i = topk(np.zeros(6, dtype), 4)
    assert i.tolist() == [0, 1, 2, 3]
    v, i = topk(np.array([[5, 1], [2, 7], [9, 9]], dtype), 2, axis=0)
    assert i.tolist() == [[2, 2], [0, 1]] and v.tolist() == [[9, 9], [5, 7]]


def test_beam_topk_ties_and_dead_rows():
    lp = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    s, b, j = beam_topk(lp, np.array([-1.0, -1.0]), 4, normalize=False)
    assert b.tolist() == [0, 0, 1, 1] and j.tolist() == [0, 1, 0, 1]
    dead = np.array([[-np.inf, -np.inf], [0.0, -1.0]])
    s, b, j = beam_topk(dead, np.zeros(2), 4)
    assert s[:2] == pytest.approx([-np.log1p(np.exp(-1.0)), -1 - np.log1p(np.exp(-1.0))])
    assert (b[:2].tolist(), j[:2].tolist()) == ([1, 1], [0, 1])
    assert np.isneginf(s[2:]).all() and not np.isnan(s).any()


def test_kernel_errors_and_empty_inputs():
    x = np.arange(5.0)
    for k in (0, 6):
        with pytest.raises(ValueError, match="k"):
            topk(x, k)
    with pytest.raises(TypeError, match="k"):
        topk(x, 1.5)
    assert topk(x, 5)[1].tolist() == [4, 3, 2, 1, 0]
    v, i = topk(np.array([2.5]), 1)
    assert v.tolist() == [2.5] and i.tolist() == [0]
    v, i = topk(np.zeros((0, 5)), 3)
    assert v.shape == (0, 3) and i.shape == (0, 3) and i.dtype == np.int64
    assert log_softmax(np.zeros((0, 4))).shape == (0, 4)
    assert log_softmax(np.zeros((3, 0))).shape == (3, 0)
    assert log_softmax(np.array([4.0])).tolist() == [0.0]
    with pytest.raises(ValueError, match="k"):
        topk(np.zeros((3, 0)), 1)
    with pytest.raises(ValueError, match="0-d"):
        topk(np.float64(1.0), 1)
    for bad in (np.zeros(3), np.zeros((2, 2, 2, 2))):       # 3-D is a batch of beam sets
        with pytest.raises(ValueError, match="2-D"):
            beam_topk(bad, np.zeros(2), 1)
    with pytest.raises(ValueError, match="beam_scores"):
        beam_topk(np.zeros((2, 3)), np.zeros(3), 1)
    with pytest.raises(ValueError, match="beam_scores"):
        beam_topk(np.zeros((2, 3)), np.array([0.0, np.nan]), 1)
    with pytest.raises(ValueError, match="k"):
        beam_topk(np.zeros((2, 3)), np.zeros(2), 7)
    with pytest.raises(ValueError, match="k"):
        beam_topk(np.zeros((0, 3)), np.zeros(0), 1)
    s, b, j = beam_topk(np.array([[0.0]]), np.array([-2.0]), 1)
    assert s.tolist() == [-2.0] and b.tolist() == [0] and j.tolist() == [0]


def test_all_neg_inf_row_no_warning():
    x = np.array([[-np.inf, -np.inf], [0.0, -1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = log_softmax(x, backend="numpy")
        beam_topk(x, np.zeros(2), 4, backend="numpy")
    assert np.isnan(out[0]).all()


def test_kernels_leave_inputs_alone():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9))
    s = rng.standard_normal(4)
    x0, s0 = x.copy(), s.copy()
    topk(x, 3)
    log_softmax(x)
    beam_topk(x, s, 5)
    beam_topk(x, s, 5, normalize=False)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(s, s0)
