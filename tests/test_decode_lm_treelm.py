"""fastdl.decode ``TreeLM``: ids, vocabulary and decoding, rows under both protocols,
validation and ``from_paths``, searches with eos, malformed trees rejected, and integer
arguments (token ids, counts, vocabulary sizes) beyond int64.
"""

import math

import numpy as np
import pytest

from fastdl.decode import TreeLM, beam_search, exact_search, exhaustive_search, greedy, sample

from fastdl.testing import RandomLM


NEG_INF = -math.inf


# ---------------------------------------------------------------- TreeLM

def test_treelm_ids_vocab_decode():
    lm = TreeLM({"b": (-0.5, {"c": -0.1, "b": -0.2}), "c": -1.0}, eos="</s>")
    assert lm.vocab == ["<BOS>", "</s>", "b", "c"] and lm.vocab_size == 4
    assert lm.bos == 0 and lm.eos == 1
    assert lm.encode("b c") == [2, 3]
    assert lm.decode([0, 2, 3, 1]) == "b c" and lm.decode(np.array([2, 2])) == "b b"
    no_eos = TreeLM({"x": 0.0}, bos="<s>")
    assert no_eos.vocab == ["<s>", "x"] and no_eos.eos is None and no_eos.decode([1]) == "x"


def test_treelm_rows_both_protocols():
    lm = TreeLM({"b": (-0.5, {"c": -0.1, "b": -0.2}), "c": -1.0}, eos="</s>")
    cases = {(0,): {2: -0.5, 3: -1.0}, (0, 2): {3: -0.1, 2: -0.2}, (0, 3): {},
             (0, 2, 3): {}, (0, 2, 2): {}, (0, 1): {}, (2,): {}, (0, 2, 3, 3): {}}
    for prefix, edges in cases.items():
        want = np.full(4, NEG_INF)
        for j, v in edges.items():
            want[j] = v
        np.testing.assert_array_equal(lm(np.array([prefix], np.int64))[0], want)
        state = lm.initial_state(1)
        for t in prefix:
            out, state = lm.step(np.array([t], np.int64), state)
        np.testing.assert_array_equal(out[0], want)
    # batched, with reorder
    p = np.array([[0, 2], [0, 3]], np.int64)
    s = lm.initial_state(2)
    _, s = lm.step(np.array([0, 0]), s)
    _, s = lm.step(np.array([2, 3]), s)
    np.testing.assert_array_equal(lm.step(np.array([3, 3]), lm.reorder(s, [0, 0]))[0],
                                  lm(np.array([[0, 2, 3], [0, 2, 3]])))
    np.testing.assert_array_equal(lm(p), np.stack([lm(p[:1])[0], lm(p[1:])[0]]))
    with pytest.raises(ValueError, match="prefixes"):
        lm(np.zeros((2, 0), np.int64))


def test_treelm_validation_and_from_paths():
    with pytest.raises(TypeError, match="string"):
        TreeLM({1: -1.0})
    with pytest.raises(ValueError, match="<= 0"):
        TreeLM({"a": (0.5, {})})
    with pytest.raises(ValueError, match="<= 0"):
        TreeLM({"a": (-1.0, {"b": math.nan})})
    paths = {("a",): -1.0, ("a", "b"): -2.0, ("c",): -0.5, ("a", "c"): -0.3}
    t1 = TreeLM.from_paths(paths, eos="</s>")
    t2 = TreeLM({"a": (-1.0, {"b": -2.0, "c": -0.3}), "c": -0.5}, eos="</s>")
    assert t1.vocab_size == t2.vocab_size and set(t1.vocab) == set(t2.vocab)
    for text in ("a", "c", "a b", "a c"):
        ids1, ids2 = [0] + t1.encode(text), [0] + t2.encode(text)
        r1 = dict(zip(t1.vocab, t1(np.array([ids1[:-1]]))[0]))
        r2 = dict(zip(t2.vocab, t2(np.array([ids2[:-1]]))[0]))
        assert r1 == r2
    with pytest.raises(ValueError, match="prefix"):
        TreeLM.from_paths({("a", "b"): -1.0})


def test_treelm_searches_and_eos():
    lm = TreeLM({"go": (-0.1, {"</s>": -0.7, "on": (-0.8, {"</s>": 0.0})}), "stop": -2.5},
                eos="</s>")
    h = beam_search(lm, 2, 5, bos=lm.bos, eos=lm.eos)
    assert [lm.decode(x.tokens) for x in h] == ["go", "go on"]
    assert h[0].tokens[-1] == lm.eos and h[0].log_prob == pytest.approx(-0.8)
    assert h[1].log_prob == pytest.approx(-0.9)
    # "stop" is a leaf without eos: it cannot reach 5 tokens
    assert all("stop" not in lm.decode(x.tokens) for x in h)
    e = exact_search(lm, 5, bos=lm.bos, eos=lm.eos)[0]
    assert lm.decode(e.tokens) == "go" and e.log_prob == pytest.approx(-0.8)


# ---------------------------------------------------------------- malformed trees

_SHARED = {"z": -0.5}


@pytest.mark.parametrize("tree, exc, words", [
    (None, TypeError, ["tree must be a mapping", "NoneType"]),
    ([("a", -1.0)], TypeError, ["tree must be a mapping", "list"]),
    ({}, ValueError, ["at least one continuation"]),
    ({"a": (-0.1, ["b"])}, TypeError, ["subtree of tree['a']", "mapping", "list"]),
    ({"a": (-0.1, {"b": (-0.2, "c")})}, TypeError, ["subtree of tree['a']['b']", "str"]),
    ({"a": (-0.1,)}, ValueError, ["tree['a']", "pair", "length 1"]),
    ({"a": (-0.1, {}, {})}, ValueError, ["tree['a']", "length 3"]),
    ({"a": "x"}, TypeError, ["log-probability of tree['a']", "real number", "'x'"]),
    ({"a": None}, TypeError, ["log-probability of tree['a']", "None"]),
    ({"a": (True, {})}, TypeError, ["log-probability of tree['a']", "bool"]),
    ({"a": {"b": -1.0}}, TypeError, ["tree['a']", "(log_prob, subtree)"]),
    ({"a": (-1.0, {2: -1.0})}, TypeError, ["tokens must be strings", "tree['a']"]),
    ({"a": (-1.0, {"b": 0.5})}, ValueError, ["tree['a']['b']", "<= 0", "0.5"]),
    ({"a": math.nan}, ValueError, ["tree['a']", "<= 0", "nan"]),
    ({"a b": -1.0}, ValueError, ["whitespace", "'a b'"]),
    ({"": -1.0}, ValueError, ["non-empty", "''"]),
    ({"<BOS>": -1.0}, ValueError, ["start token", "'<BOS>'"]),
])
def test_treelm_rejects_malformed_trees(tree, exc, words):
    with pytest.raises(exc) as info:
        TreeLM(tree)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_treelm_cycles_depth_sharing_and_lists():
    cyclic = {"a": -1.0}
    cyclic["b"] = (-1.0, {"c": (-1.0, cyclic)})
    with pytest.raises(ValueError, match=r"tree\['b'\]\['c'\].*cyclic"):
        TreeLM(cyclic)
    # far deeper than the recursion limit
    deep = node = {}
    for _ in range(5000):
        node["x"] = (-0.01, {})
        node = node["x"][1]
    node["y"] = -0.5
    lm = TreeLM(deep)
    assert lm.vocab == ["<BOS>", "x", "y"]
    (h,) = exact_search(lm, 5001, bos=0)
    assert h.tokens == (1,) * 5000 + (2,) and h.log_prob == pytest.approx(-50.5)
    # one subtree object under two tokens is one node: same rows, no blow-up
    lm = TreeLM({"a": (-1.0, _SHARED), "b": (-2.0, _SHARED)})
    np.testing.assert_array_equal(lm(np.array([[0, 1], [0, 3]])), [[NEG_INF, NEG_INF, -0.5,
                                                                     NEG_INF]] * 2)
    # pairs may be lists (trees from JSON)
    a = TreeLM({"a": [-1.0, {"b": -0.5}]})
    b = TreeLM({"a": (-1.0, {"b": -0.5})})
    np.testing.assert_array_equal(a(np.array([[0], [0, 1][:1]])), b(np.array([[0], [0]])))
    np.testing.assert_array_equal(a(np.array([[0, 1]])), b(np.array([[0, 1]])))
    assert TreeLM({"a": np.float32(-1.0), "b": -2}).vocab_size == 3


def test_treelm_bos_eos_names_and_from_paths_checked():
    for kw, exc, word in [(dict(eos=3), TypeError, "eos"), (dict(bos=None), TypeError, "bos"),
                          (dict(eos="a b"), ValueError, "eos"),
                          (dict(eos="<BOS>"), ValueError, "differ")]:
        with pytest.raises(exc, match=word):
            TreeLM({"a": -1.0}, **kw)
    for paths, exc, word in [(None, TypeError, "mapping"), ({"ab": -1.0}, TypeError, "tuples"),
                             ({(): -1.0}, TypeError, "non-empty"),
                             ({("a",): "x"}, TypeError, "real number"),
                             ({("a",): (-1.0, ["b"])}, TypeError, "mapping")]:
        with pytest.raises(exc, match=word):
            TreeLM.from_paths(paths)


# ---------------------------------------------------------------- integer arguments

BIG = [2 ** 63, 2 ** 64 + 5, np.uint64(2 ** 64 - 1)]


class Untouchable:
    """A model that must not be called: the argument is refused before (and a search that
    accepted a huge max_len fails here instead of running for ever)."""

    def __init__(self, declare=True):
        if declare:
            self.vocab_size = 4

    def __call__(self, prefixes):
        raise AssertionError("the model was called")


WITH_BOS = {
    "greedy": lambda lm, bos, **kw: greedy(lm, 3, bos=bos, **kw),
    "beam": lambda lm, bos, **kw: beam_search(lm, 2, 3, bos=bos, **kw),
    "exhaustive": lambda lm, bos, **kw: exhaustive_search(lm, 3, bos=bos, **kw),
    "exact": lambda lm, bos, **kw: exact_search(lm, 3, bos=bos, **kw),
    "sample": lambda lm, bos, **kw: sample(lm, 3, bos=bos, seed=1, **kw),
}


@pytest.mark.parametrize("big", BIG, ids=["2**63", "2**64+5", "uint64max"])
@pytest.mark.parametrize("declare", [True, False])
@pytest.mark.parametrize("search", list(WITH_BOS))
def test_token_ids_beyond_int64(search, declare, big):
    lm = Untouchable(declare)
    run = WITH_BOS[search]
    for bos, kw, name in [(big, {}, "bos"), (0, dict(eos=big), "eos"),
                          (0, dict(eos=[1, big]), "eos")]:
        with pytest.raises(ValueError, match=rf"{name} must be a token id in \[0, "):
            run(lm, bos, **kw)


@pytest.mark.parametrize("big", BIG, ids=["2**63", "2**64+5", "uint64max"])
def test_counts_beyond_int64(big):
    lm = Untouchable()
    calls = [
        ("max_len", lambda: greedy(lm, big, bos=0)),
        ("max_len", lambda: beam_search(lm, 2, big, bos=0)),
        ("max_len", lambda: exhaustive_search(lm, big, bos=0)),
        ("max_len", lambda: exact_search(lm, big, bos=0)),
        ("max_len", lambda: sample(lm, big, bos=0)),
        ("beam_width", lambda: beam_search(lm, big, 3, bos=0)),
        ("num_return", lambda: beam_search(lm, 2, 3, bos=0, num_return=big)),
        ("min_len", lambda: beam_search(lm, 2, 3, bos=0, eos=1, min_len=big)),
        ("no_repeat_ngram_size", lambda: beam_search(lm, 2, 3, bos=0, no_repeat_ngram_size=big)),
        ("top", lambda: exhaustive_search(lm, 3, bos=0, top=big)),
        ("limit", lambda: exhaustive_search(lm, 3, bos=0, limit=big)),
        ("max_expansions", lambda: exact_search(lm, 3, bos=0, max_expansions=big)),
        ("num_samples", lambda: sample(lm, 3, bos=0, num_samples=big)),
        ("top_k", lambda: sample(lm, 3, bos=0, top_k=big)),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=rf"{name} must be <= 2\*\*63 - 1"):
            call()


def test_length_penalty_that_overflows_is_refused():
    with pytest.raises(ValueError, match="length_penalty.*overflow"):
        beam_search(Untouchable(), 2, 3, bos=0, eos=1, length_penalty=1e6)
    with pytest.raises(ValueError, match="length_penalty.*overflow"):
        beam_search(Untouchable(), 2, 10 ** 12, bos=0, eos=1, length_penalty=-30.0)
    lm = RandomLM(4)
    # the largest allowed value works and gives finite scores
    top = 700.0 / math.log(3)
    for h in beam_search(lm, 2, 3, bos=0, eos=1, length_penalty=top, early_stopping=False):
        assert math.isfinite(h.score)
    assert beam_search(lm, 2, 1, bos=0, length_penalty=1e300)   # 1**α is 1 for any α


@pytest.mark.parametrize("n, exc", [(0, ValueError), (-3, ValueError), (2 ** 63, ValueError),
                                    (3.5, TypeError), ("4", TypeError), (True, TypeError)])
def test_declared_vocab_size_checked(n, exc):
    lm = Untouchable()
    lm.vocab_size = n
    for search in WITH_BOS.values():
        with pytest.raises(exc, match="vocab_size"):
            search(lm, 0)
