"""fastdl.decode.sample: ancestral sampling with temperature, top-k, top-p and min-p."""
import math
import zlib
from collections import Counter

import numpy as np
import pytest

from fastdl.decode import Logits, TreeLM, examples, greedy, sample


def _lsm(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class RandomLM:
    """Random log-probs per full prefix (⟨BOS⟩ included); both protocols."""

    def __init__(self, N, seed=0, *, logits=False, scale=1.5):
        self.N, self.seed, self.logits, self.scale = N, seed, logits, scale
        self.vocab_size = N
        if logits:
            self.normalized = False
        self.returned = []

    def raw(self, prefix):
        rng = np.random.default_rng(zlib.crc32(repr((self.seed, tuple(prefix))).encode()))
        x = rng.standard_normal(self.N) * self.scale
        return x if self.logits else _lsm(x)

    def logp(self, prefix):
        return _lsm(self.raw(prefix))

    def _out(self, prefixes):
        out = np.stack([self.raw(p) for p in prefixes])
        self.returned.append((out, out.copy()))
        return out

    def __call__(self, prefixes):
        return self._out([tuple(p) for p in prefixes.tolist()])

    def initial_state(self, batch):
        return [()] * batch

    def step(self, tokens, state):
        new = [s + (t,) for s, t in zip(state, tokens.tolist())]
        return self._out(new), new

    def reorder(self, state, indices):
        return [state[i] for i in indices]

    def seq_logp(self, tokens):
        s, prefix = 0.0, (0,)
        for t in tokens:
            s += float(self.logp(prefix)[t])
            prefix += (t,)
        return s


def fixed(probs, *, vocab_size=None):
    """A callable LM giving the same next-token distribution after every prefix."""
    lp = np.log(np.asarray(probs, np.float64))

    def lm(p):
        return np.tile(lp, (len(p), 1))
    return lm


def counts(hyps, position=0):
    return Counter(h.tokens[position] for h in hyps)


# ---------------------------------------------------------------- basic behaviour

@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("eos", [None, 2])
def test_top_k_1_is_greedy(seed, eos):
    lm = RandomLM(5, 10 + seed)
    g = greedy(lm, 4, bos=0, eos=eos)[0]
    got = sample(lm, 4, bos=0, eos=eos, top_k=1, seed=seed, num_samples=4)
    assert len(got) == 4
    for h in got:
        assert h.tokens == g.tokens
        assert h.log_prob == pytest.approx(g.log_prob, rel=1e-12)
    # also with temperature and the other filters relaxed
    for h in sample(lm, 4, bos=0, eos=eos, top_k=1, temperature=3.0, top_p=1.0, min_p=0.0,
                    seed=seed):
        assert h.tokens == g.tokens


def test_frequencies_match_probabilities():
    p = [0.2, 0.5, 0.3]
    hyps = sample(fixed(p), 1, bos=0, seed=123, num_samples=20000)
    assert len(hyps) == 20000 and all(len(h.tokens) == 1 for h in hyps)
    c = counts(hyps)
    for j, pj in enumerate(p):
        assert abs(c[j] / 20000 - pj) < 0.02, (j, c)
    for h in hyps:
        assert h.log_prob == pytest.approx(math.log(p[h.tokens[0]]), rel=1e-12)


def test_two_step_frequencies():
    """Conditionals: after token 0 the distribution changes (a tree)."""
    lm = TreeLM({"a": (math.log(0.25), {"x": math.log(0.9), "y": math.log(0.1)}),
                 "b": (math.log(0.75), {"x": math.log(0.2), "y": math.log(0.8)})})
    hyps = sample(lm, 2, bos=0, seed=5, num_samples=20000)
    c = Counter(lm.decode(h.tokens) for h in hyps)
    want = {"a x": 0.225, "a y": 0.025, "b x": 0.15, "b y": 0.6}
    for k, v in want.items():
        assert abs(c[k] / 20000 - v) < 0.02, c
    assert hyps[0].stats.dead_ends == 0


def test_seeds():
    lm = RandomLM(6, 3)
    a = sample(lm, 5, bos=0, seed=42, num_samples=8)
    b = sample(lm, 5, bos=0, seed=42, num_samples=8)
    c = sample(lm, 5, bos=0, seed=43, num_samples=8)
    key = lambda hs: [(h.tokens, h.log_prob) for h in hs]  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)
    g = sample(lm, 5, bos=0, seed=np.random.default_rng(42), num_samples=8)
    assert key(g) == key(a)                                  # Generator(seed) == int seed
    rng = np.random.default_rng(9)
    first = sample(lm, 5, bos=0, seed=rng, num_samples=8)
    second = sample(lm, 5, bos=0, seed=rng, num_samples=8)
    assert key(first) != key(second)                          # the Generator advances
    assert len(sample(lm, 5, bos=0, seed=None, num_samples=3)) == 3


def test_both_protocols_same_samples():
    a = sample(RandomLM(5, 2), 4, bos=0, eos=1, seed=7, num_samples=50, top_p=0.9)
    b = sample(lambda p: RandomLM(5, 2)(p), 4, bos=0, eos=1, seed=7, num_samples=50,
               top_p=0.9)
    assert [(h.tokens, h.log_prob) for h in a] == [(h.tokens, h.log_prob) for h in b]
    assert a[0].stats.lm_calls == b[0].stats.lm_calls


@pytest.mark.parametrize("kw", [{}, dict(temperature=0.5), dict(temperature=2.5),
                                dict(top_k=2), dict(top_p=0.6), dict(min_p=0.3),
                                dict(top_k=3, top_p=0.8, min_p=0.1, temperature=0.7)])
@pytest.mark.parametrize("logits", [False, True])
def test_log_prob_is_model_log_prob(kw, logits):
    lm = RandomLM(5, 4, logits=logits)
    hyps = sample(lm, 4, bos=0, eos=3, seed=1, num_samples=60, **kw)
    for h in hyps:
        assert h.log_prob == pytest.approx(lm.seq_logp(h.tokens), rel=1e-9, abs=1e-12)
        assert h.score == h.log_prob
        assert len(h.tokens) == 4 or h.tokens[-1] == 3
        assert 3 not in h.tokens[:-1]
    lps = [h.log_prob for h in hyps]
    assert lps == sorted(lps, reverse=True)
    s = hyps[0].stats
    assert s.algorithm == "sample" and s.hypothesis_tokens == sum(len(h.tokens) for h in hyps)
    assert 0 <= s.lm_time_s <= s.total_time_s
    for arr, copy in lm.returned:                              # model outputs untouched
        np.testing.assert_array_equal(arr, copy)


def test_logits_wrapper():
    a = sample(Logits(lambda p: RandomLM(4, 8, logits=True)(p)), 3, bos=0, seed=2,
               num_samples=30)
    b = sample(RandomLM(4, 8, logits=True), 3, bos=0, seed=2, num_samples=30)
    assert [(h.tokens) for h in a] == [h.tokens for h in b]
    assert [h.log_prob for h in a] == pytest.approx([h.log_prob for h in b])


# ---------------------------------------------------------------- filters

P = [0.5, 0.3, 0.15, 0.05]


@pytest.mark.parametrize("top_p, allowed", [(0.7, {0, 1}), (0.4, {0}), (0.01, {0}),
                                            (0.9, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_excludes(top_p, allowed):
    hyps = sample(fixed(P), 2, bos=0, top_p=top_p, seed=3, num_samples=3000)
    seen = {t for h in hyps for t in h.tokens}
    assert seen == allowed


@pytest.mark.parametrize("min_p, allowed", [(0.2, {0, 1, 2}), (0.5, {0, 1}), (0.9, {0}),
                                            (0.0, {0, 1, 2, 3}), (0.05, {0, 1, 2, 3})])
def test_min_p_excludes(min_p, allowed):
    hyps = sample(fixed(P), 2, bos=0, min_p=min_p, seed=4, num_samples=3000)
    assert {t for h in hyps for t in h.tokens} == allowed


def test_min_p_one_keeps_ties_of_the_top():
    hyps = sample(fixed([0.4, 0.2, 0.4]), 1, bos=0, min_p=1.0, seed=0, num_samples=2000)
    c = counts(hyps)
    assert set(c) == {0, 2} and abs(c[0] / 2000 - 0.5) < 0.05


def test_top_k_excludes_and_ties():
    hyps = sample(fixed(P), 2, bos=0, top_k=2, seed=5, num_samples=3000)
    assert {t for h in hyps for t in h.tokens} == {0, 1}
    c = counts(hyps)
    assert abs(c[0] / 3000 - 0.625) < 0.03                       # renormalized .5 / .8
    uni = sample(fixed([0.25] * 4), 1, bos=0, top_k=2, seed=5, num_samples=1000)
    assert set(counts(uni)) == {0, 1, 2, 3}          # ties with the k-th stay, as Hugging Face's
    assert len(sample(fixed(P), 1, bos=0, top_k=10, seed=0, num_samples=5)) == 5


@pytest.mark.parametrize("seed", range(4))
def test_filters_on_random_model(seed):
    """Every emitted token is admissible at its own prefix."""
    lm = RandomLM(8, 30 + seed, scale=2.0)
    for kw in (dict(top_p=0.6), dict(min_p=0.2), dict(top_k=3)):
        hyps = sample(lm, 3, bos=0, seed=seed, num_samples=200, **kw)
        for h in hyps:
            prefix = (0,)
            for t in h.tokens:
                p = np.exp(lm.logp(prefix))
                order = np.argsort(-p, kind="stable")
                rank = int(np.flatnonzero(order == t)[0])
                if "top_p" in kw:
                    assert p[order[:rank]].sum() < kw["top_p"] + 1e-12
                if "min_p" in kw:
                    assert p[t] >= kw["min_p"] * p.max() * (1 - 1e-12)
                if "top_k" in kw:
                    assert rank < kw["top_k"]
                prefix += (t,)


def test_temperature_direction_and_values():
    p = np.array([0.6, 0.3, 0.1])
    freq = {}
    for T in (0.5, 1.0, 2.0):
        hyps = sample(fixed(p), 1, bos=0, temperature=T, seed=11, num_samples=20000)
        c = counts(hyps)
        freq[T] = np.array([c[j] / 20000 for j in range(3)])
        q = p ** (1 / T) / (p ** (1 / T)).sum()
        assert np.abs(freq[T] - q).max() < 0.02, (T, freq[T], q)
        assert {round(h.log_prob, 9) for h in hyps} <= {round(math.log(x), 9) for x in p}
    assert freq[0.5][0] > freq[1.0][0] > freq[2.0][0]
    assert freq[0.5][2] < freq[1.0][2] < freq[2.0][2]


# ---------------------------------------------------------------- dead ends, eos, edge cases

def test_dead_ends_end_samples_early():
    lm = examples.shapes_lm()
    hyps = sample(lm, 4, bos=lm.bos, seed=0, num_samples=200)
    assert hyps[0].stats.dead_ends == 200                       # no path has 4 tokens
    assert all(len(h.tokens) in (2, 3) for h in hyps)
    assert any(lm.decode(h.tokens) == "the green" for h in hyps)
    for h in hyps:
        assert h.log_prob > -math.inf
    hyps = sample(lm, 3, bos=lm.bos, seed=0, num_samples=300)
    short = sum(len(h.tokens) < 3 for h in hyps)
    assert short > 0 and hyps[0].stats.dead_ends == short
    assert {lm.decode(h.tokens) for h in hyps if len(h.tokens) < 3} == {"the green"}


def test_dead_ends_both_protocols():
    lm = examples.shapes_lm()
    a = sample(lm, 3, bos=lm.bos, seed=3, num_samples=100)
    b = sample(lambda p: lm(p), 3, bos=lm.bos, seed=3, num_samples=100)
    assert [(h.tokens, h.log_prob) for h in a] == [(h.tokens, h.log_prob) for h in b]
    assert a[0].stats.dead_ends == b[0].stats.dead_ends > 0


def test_bos_eos_checked_at_first_call_without_vocab_size():
    calls = []

    def lm(p):
        calls.append(1)
        return np.log(np.full((len(p), 3), 1 / 3))
    with pytest.raises(ValueError, match="bos"):
        sample(lm, 2, bos=3)
    with pytest.raises(ValueError, match="eos"):
        sample(lm, 2, bos=0, eos=[0, 3])
    assert len(calls) == 2


def test_no_continuation_of_bos_raises():
    with pytest.raises(ValueError, match="step 1"):
        sample(lambda p: np.full((len(p), 3), -np.inf), 2, bos=0)


def test_eos_ends_samples():
    lm = TreeLM({"a": (math.log(0.5), {"</s>": 0.0}), "</s>": math.log(0.5)}, eos="</s>")
    hyps = sample(lm, 5, bos=0, eos=lm.eos, seed=1, num_samples=400)
    assert {h.tokens for h in hyps} == {(1,), (2, 1)}
    assert hyps[0].stats.dead_ends == 0
    assert abs(sum(h.tokens == (1,) for h in hyps) / 400 - 0.5) < 0.08


def test_vocabulary_of_one_and_single_sample():
    hyps = sample(lambda p: np.zeros((len(p), 1)), 3, bos=0, seed=0, num_samples=2)
    assert [h.tokens for h in hyps] == [(0, 0, 0)] * 2 and hyps[0].log_prob == 0.0
    assert sample(lambda p: np.zeros((len(p), 1)), 3, bos=0, eos=0)[0].tokens == (0,)
    assert len(sample(RandomLM(3), 1, bos=0)) == 1


def test_memory_follows_the_sequences_not_max_len():
    import tracemalloc

    from fastdl.decode import beam_search, exact_search
    lm = examples.shapes_lm()
    eos_lm = TreeLM({"a": (math.log(0.5), {"</s>": 0.0}), "</s>": math.log(0.5)}, eos="</s>")
    sample(lm, 3, bos=0, seed=0)                  # backends loaded before measuring
    for max_len in (2 ** 40, 2 ** 62):
        tracemalloc.start()
        try:
            hyps = sample(lm, max_len, bos=0, seed=0, num_samples=50)
            ends = sample(eos_lm, max_len, bos=0, eos=1, seed=0, num_samples=50)
            beams = beam_search(eos_lm, 2, max_len, bos=0, eos=1)
            best = exact_search(eos_lm, max_len, bos=0, eos=1)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 2 ** 20, peak            # a few hundred tokens, not 8·max_len bytes
        assert {lm.decode(h.tokens) for h in hyps} <= {"the green", "the red rectangle",
                                                       "a blue ellipse", "a blue square",
                                                       "a red circle", "a red square"}
        assert hyps[0].stats.dead_ends == 50 and all(h.log_prob > -math.inf for h in hyps)
        assert {h.tokens for h in ends} == {(1,), (2, 1)}
        assert [h.tokens for h in beams] == [(1,), (2, 1)] and best[0].tokens == (1,)


# ---------------------------------------------------------------- argument errors

@pytest.mark.parametrize("kw, exc, word", [
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=math.inf), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=-0.1), ValueError, "top_p"),
    (dict(min_p=-0.1), ValueError, "min_p"),
    (dict(min_p=1.5), ValueError, "min_p"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=1.5), TypeError, "top_k"),
    (dict(num_samples=0), ValueError, "num_samples"),
    (dict(max_len=0), ValueError, "max_len"),
    (dict(bos=5), ValueError, "bos"),
    (dict(eos=7), ValueError, "eos"),
    (dict(temperature="hot"), TypeError, "temperature"),
])
def test_argument_errors(kw, exc, word):
    args = dict(max_len=2, bos=0)
    args.update(kw)
    with pytest.raises(exc, match=word):
        sample(RandomLM(4), args.pop("max_len"), **args)
