"""fastdl.decode language-model protocols: callable vs stateful (detection, call order,
full prefixes), the ``Logits`` wrapper, and the checks every search applies to what a
model returns (NaN, +inf, positive log-probabilities, shapes, vocabulary width, dtypes).
"""

import math

import numpy as np
import pytest

from fastdl.decode import (Logits, TreeLM, beam_search, exact_search, exhaustive_search,
                           greedy, sample)
from fastdl.decode.lm import is_stateful, vocab_size

from fastdl.testing import RandomLM, log_softmax_row


RUNNERS = {
    "greedy": lambda lm, T=3, **kw: greedy(lm, T, bos=0, **kw),
    "beam": lambda lm, T=3, **kw: beam_search(lm, 2, T, bos=0, **kw),
    "exhaustive": lambda lm, T=3, **kw: exhaustive_search(lm, T, bos=0, top=3, **kw),
    "exact": lambda lm, T=3, **kw: exact_search(lm, T, bos=0, **kw),
    "sample": lambda lm, T=3, **kw: sample(lm, T, bos=0, seed=1, num_samples=3, **kw),
}
RUN = pytest.mark.parametrize("run", list(RUNNERS.values()), ids=list(RUNNERS))


def key(hyps):
    return [(h.tokens, h.log_prob) for h in hyps]


# ---------------------------------------------------------------- the two protocols

def test_protocol_detection():
    lm = RandomLM(3)
    assert is_stateful(lm)
    assert not is_stateful(lambda p: lm(p))
    assert is_stateful(Logits(lm)) and not is_stateful(Logits(lambda p: lm(p)))

    class Half:                                     # step without reorder: not stateful
        def initial_state(self, b):
            return None

        def step(self, t, s):
            return None

        def __call__(self, p):
            return np.log(np.full((len(p), 2), 0.5))
    assert not is_stateful(Half())
    assert greedy(Half(), 2, bos=0)[0].tokens == (0, 0)
    assert vocab_size(lm) == 3 and vocab_size(RandomLM(3, declare=False)) is None
    assert vocab_size(TreeLM({"a": 0.0})) == 2

    class V:
        vocab = ["x", "y", "z", "w"]
    assert vocab_size(V()) == 4


@RUN
def test_stateful_object_used_statefully_lambda_forces_callable(run):
    lm = RandomLM(4, 1)
    a = run(lm)
    assert {"initial_state", "step"} <= lm.kinds() and "call" not in lm.kinds()
    lm2 = RandomLM(4, 1)
    b = run(lambda p: lm2(p))
    assert lm2.kinds() == {"call"}
    assert key(a) == key(b)
    assert a[0].stats.lm_calls == b[0].stats.lm_calls


def test_stateful_calls_in_order():
    lm = RandomLM(3, 2)
    beam_search(lm, 2, 3, bos=0)
    assert lm.log[0] == ("initial_state", 1)
    assert lm.log[1] == ("step", [0])                        # the first step gets ⟨BOS⟩
    # a reorder before each later step, skipped when every beam keeps its row
    kinds = [k for k, _ in lm.log]
    assert kinds in (["initial_state", "step", "reorder", "step", "reorder", "step"],
                     ["initial_state", "step", "reorder", "step", "step"])
    assert len(lm.log[2][1]) == 2 and set(lm.log[2][1]) == {0}
    assert all(list(a) != list(range(len(a))) for k, a in lm.log if k == "reorder")
    lm = RandomLM(3, 2)
    sample(lm, 2, bos=0, num_samples=5, seed=0)
    assert lm.log[0] == ("initial_state", 5) and lm.log[1] == ("step", [0] * 5)


def test_callable_gets_full_prefixes():
    seen = []
    inner = RandomLM(3, 4)

    def lm(p):
        seen.append(p.copy())
        return inner(p)
    hyps = beam_search(lm, 2, 3, bos=2)
    assert [s.shape for s in seen] == [(1, 1), (2, 2), (2, 3)]
    assert all(s.dtype == np.int64 and (s[:, 0] == 2).all() for s in seen)
    # the last call's rows are the prefixes of the final beams
    assert {tuple(r[1:]) for r in seen[-1].tolist()} == {h.tokens[:-1] for h in hyps}


# ---------------------------------------------------------------- Logits

def test_logits_wrapper_passes_through():
    lm = RandomLM(4, 3, logits=True)
    del lm.normalized
    w = Logits(lm)
    assert w.normalized is False and w.lm is lm
    assert w.vocab_size == 4 and w.step == lm.step and w.reorder == lm.reorder
    p = np.zeros((2, 1), np.int64)
    np.testing.assert_array_equal(w(p), lm(p))
    tree = TreeLM({"a": 0.0}, eos="</s>")
    wt = Logits(tree)
    assert wt.vocab == tree.vocab and wt.bos == tree.bos and wt.decode([2]) == "a"


@RUN
def test_logits_wrapper_and_attribute_equal_log_probs(run):
    """Logits in, log-softmax applied: the same search as on the normalized model."""
    def normalized():
        base = RandomLM(4, 5, logits=True)
        return lambda p: np.stack([log_softmax_row(r) for r in base(p)])
    want = run(normalized())
    for lm in (RandomLM(4, 5, logits=True), Logits(lambda p: RandomLM(4, 5, logits=True)(p)),
               Logits(RandomLM(4, 5, logits=True))):
        got = run(lm)
        assert [h.tokens for h in got] == [h.tokens for h in want]
        assert [h.log_prob for h in got] == pytest.approx([h.log_prob for h in want], rel=1e-9)


@RUN
def test_logits_without_wrapper_is_rejected(run):
    raw = RandomLM(4, 5, logits=True)
    del raw.normalized
    with pytest.raises(ValueError, match=r"step 1.*above 0.*Logits"):
        run(raw)
    with pytest.raises(ValueError, match="above 0"):
        run(lambda p: raw(p))


def test_unnormalized_log_probs_accepted():
    """Rows need not sum to 1 (a pruned tree): kept as given, no renormalization."""
    def lm(p):
        return np.log(np.tile([0.1, 0.2, 0.3], (len(p), 1)))
    h = greedy(lm, 2, bos=0)[0]
    assert h.tokens == (2, 2) and h.log_prob == pytest.approx(2 * math.log(0.3))
    assert exact_search(lm, 2, bos=0)[0].log_prob == pytest.approx(2 * math.log(0.3))


# ---------------------------------------------------------------- output checks

def _bad(kind, when=1, N=3):
    """A callable model that misbehaves at step ``when``."""
    good = RandomLM(N, 0, declare=False)

    def lm(p):
        out = good(p)
        if p.shape[1] != when:
            return out
        if kind == "nan":
            out[-1, 1] = np.nan
        elif kind == "posinf":
            out[0, 0] = np.inf
        elif kind == "positive":
            out[0, 0] = 0.5
        elif kind == "rows":
            out = out[:1] if len(out) > 1 else np.vstack([out, out])
        elif kind == "cols":
            out = out[:, :-1]
        elif kind == "1d":
            out = out[0]
        elif kind == "3d":
            out = out[:, :, None]
        elif kind == "empty":
            out = out[:, :0]
        elif kind == "dtype":
            out = out.astype(np.complex128)
        elif kind == "strings":
            out = np.full(out.shape, "x")
        elif kind == "ragged":
            out = [[0.0], [0.0, -1.0]]
        return out
    return lm


MESSAGES = {"nan": "NaN", "posinf": r"\+inf", "positive": "above 0", "rows": "shape",
            "cols": "shape", "1d": "shape", "3d": "shape", "empty": "empty vocabulary",
            "dtype": "dtype", "strings": "dtype", "ragged": "not an array"}


@RUN
@pytest.mark.parametrize("kind", list(MESSAGES))
def test_bad_model_outputs(run, kind):
    when = 1 if kind in ("empty", "ragged") else 2      # "cols": N is learned at step 1
    with pytest.raises(ValueError, match=rf"step {when}\b.*{MESSAGES[kind]}"):
        run(_bad(kind, when))


@RUN
def test_wrong_width_for_declared_vocabulary(run):
    def wide(p):
        return np.stack([log_softmax_row(np.zeros(4))] * len(p))
    with pytest.raises(ValueError, match=r"step 1.*shape \(\d+, 4\).*expected \(\d+, 3\)"):
        run(_Declared(wide, 3))
    assert run(_Declared(wide, 4))                     # the declared width is fine


class _Declared:
    """A callable declaring ``vocab_size`` that returns another width."""

    def __init__(self, lm, n):
        self.lm, self.vocab_size = lm, n

    def __call__(self, p):
        return self.lm(p)


@RUN
def test_vocabulary_changes_between_steps(run):
    def lm(p):
        n = 3 if p.shape[1] == 1 else 4
        return np.tile(log_softmax_row(np.arange(n, dtype=float)), (len(p), 1))
    with pytest.raises(ValueError, match=r"step 2.*shape"):
        run(lm)


def test_stateful_output_checked():
    class BadStep(RandomLM):
        def step(self, tokens, state):
            out, st = super().step(tokens, state)
            if len(st[0]) == 2:
                out[:, 0] = np.nan
            return out, st
    for run in RUNNERS.values():
        with pytest.raises(ValueError, match=r"step 2.*NaN"):
            run(BadStep(3))


def test_accepted_dtypes_and_containers():
    base = RandomLM(3, 0)
    want = greedy(base, 3, bos=0)[0]
    lists = greedy(lambda p: base(p).tolist(), 3, bos=0)[0]
    assert (lists.tokens, lists.log_prob) == (want.tokens, want.log_prob)
    f16 = greedy(lambda p: base(p).astype(np.float16), 3, bos=0)[0]
    assert f16.tokens == want.tokens
    ints = greedy(lambda p: -np.tile(np.array([3, 1, 2]), (len(p), 1)), 2, bos=0)[0]
    assert ints.tokens == (1, 1) and ints.log_prob == -2.0
    # float32 rounding: normalized rows may exceed 0 by a few ulp
    tiny = greedy(lambda p: np.tile(np.float32([1e-6, -30.0]), (len(p), 1)), 2, bos=0)[0]
    assert tiny.tokens == (0, 0)
    with pytest.raises(ValueError, match="above 0"):
        greedy(lambda p: np.tile(np.float32([1e-3, -30.0]), (len(p), 1)), 2, bos=0)
    with pytest.raises(ValueError, match="above 0"):
        greedy(lambda p: np.tile(np.float64([1e-9, -30.0]), (len(p), 1)), 2, bos=0)
