"""Edge cases found in review: dead rows under bans, tiny temperatures, rounding
noise above 0, large logits, byte order, astronomically many sequences."""
import math
import time

import numpy as np
import pytest

from fastdl.decode import (Logits, beam_search, beam_topk, exact_search, exhaustive_search,
                           log_softmax, sample)
from fastdl.decode.examples import shapes_lm



class DeadAfterOne:
    """Logits over 4 tokens; after token 1 every continuation is -inf; eos = 3."""

    normalized = False
    vocab_size = 4

    def __call__(self, prefixes):
        out = np.tile(np.array([0.0, 1.0, 0.5, 0.2]), (len(prefixes), 1))
        out[prefixes[:, -1] == 1] = -np.inf
        return out


@pytest.mark.parametrize("kw", [dict(min_len=2), dict(no_repeat_ngram_size=2)])
def test_bans_keep_dead_rows_dead(kw):
    want = beam_search(DeadAfterOne(), 2, 2, bos=0, eos=3)
    got = beam_search(DeadAfterOne(), 2, 2, bos=0, eos=3, **kw)
    assert all(math.isfinite(h.log_prob) for h in got)
    assert [h.tokens for h in got] == [h.tokens for h in want] == [(2, 1), (2, 2)]
    assert beam_search(DeadAfterOne(), 2, 3, bos=0, eos=3, **kw)      # no NaN beam scores


@pytest.mark.parametrize("temperature", [1e-30, 1e-300, 5e-324])
def test_tiny_temperature_is_greedy(temperature):
    lm = shapes_lm()
    h = sample(lm, 3, bos=lm.bos, temperature=temperature, seed=0)[0]
    assert lm.decode(h.tokens) == "the red rectangle" and h.log_prob == pytest.approx(-9.7)
    f32 = Logits(lambda p: np.tile(np.array([0, 5, 4, 1], np.float32), (len(p), 1)))
    assert sample(f32, 2, bos=0, temperature=temperature, seed=1)[0].tokens == (1, 1)


class SlightlyPositive:
    """'Normalized' float32 log-probs with rounding noise above 0 on one branch."""

    vocab_size = 3

    def __call__(self, prefixes):
        t = prefixes.shape[1]
        if t == 1:
            return np.array([[-np.inf, -1.0, -1.0 - 3e-6]] * len(prefixes), np.float32)
        last = prefixes[:, -1:]
        return np.where(last == 1, [[-np.inf, -2e-6, -0.5]],
                        [[-np.inf, 3e-6, -5.0]]).astype(np.float32)


def test_rounding_noise_above_zero_is_clipped():
    lm = SlightlyPositive()
    ex = exact_search(lm, 2, bos=0)[0]
    full = exhaustive_search(lm, 2, bos=0)[0]
    assert ex.tokens == full.tokens and ex.log_prob == pytest.approx(full.log_prob, abs=1e-12)
    assert full.log_prob <= -1.0


@pytest.mark.parametrize("scale", [1e3, 1e5])
def test_log_softmax_of_large_logits_is_accurate(backend, scale):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 5000)) * 3 + scale).astype(np.float32)
    ref = x.astype(np.float64) - x.max(1, keepdims=True)
    ref -= np.log(np.exp(ref).sum(1, keepdims=True))
    got = log_softmax(x, backend=backend)
    assert np.max(np.abs(got - ref)) < 1e-5            # not ulp(1e5) = 8e-3
    s = np.zeros(4, np.float32)
    vals, b, j = beam_topk(x, s, 8, backend=backend)
    assert np.allclose(vals, ref[b, j], rtol=0, atol=1e-5)


def test_byte_order_and_overflowing_beam_scores(backend):
    x = np.arange(12, dtype=">f4").reshape(2, 6)
    assert log_softmax(x, backend=backend).dtype == np.float32
    v, b, j = beam_topk(x, np.zeros(2, ">f8"), 3, normalize=False, backend=backend)
    assert v.dtype == np.float32 and b.tolist() == [1, 1, 1] and j.tolist() == [5, 4, 3]
    with pytest.raises(ValueError, match="beam_scores must be finite or -inf in float32"):
        beam_topk(x.astype(np.float32), np.array([1e39, 0.0]), 2, backend=backend)


def test_model_output_in_big_endian_is_accepted():
    lm = shapes_lm()
    be = lambda p: lm(p).astype(">f8")           # noqa: E731 - a callable-only model
    assert beam_search(be, 2, 3, bos=lm.bos)[0].tokens == beam_search(lm, 2, 3, bos=lm.bos)[0].tokens


def test_huge_sequence_counts_are_not_materialised():
    lm = shapes_lm()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="over limit"):
        exhaustive_search(lm, 10**7, bos=lm.bos)
    with pytest.raises(ValueError, match="beam_width must be <= the number of sequences"):
        beam_search(lm, 11, 1, bos=lm.bos)
    assert time.perf_counter() - t0 < 1.0


# A fresh interpreter whose import of the compiled backend takes an extra second (a
# meta-path finder sleeps first): the first search of the process must not count that
# second as kernel or search time.
_SLOW_IMPORT = r"""
import importlib.abc, json, sys, time

class SlowBackend(importlib.abc.MetaPathFinder):
    imported_at = None

    def find_spec(self, name, path=None, target=None):
        if name == "fastdl._backends.cython":
            time.sleep(1.0)
            SlowBackend.imported_at = time.perf_counter()
        return None                       # the normal finders do the import

sys.meta_path.insert(0, SlowBackend())
import fastdl.decode as d
lm = d.examples.SyntheticLM(500)
t0 = time.perf_counter()
h = d.SEARCH(lm)[0]
t1 = time.perf_counter()
print(json.dumps({"kernel": h.stats.kernel_time_s, "total": h.stats.total_time_s,
                  "call": t1 - t0, "imported_in_call": SlowBackend.imported_at is not None
                  and t0 <= SlowBackend.imported_at <= t1,
                  "imported": SlowBackend.imported_at is not None}))
"""


@pytest.mark.parametrize("search", ["beam_search(lm, 4, 6, bos=0)",
                                    "sample(lm, 6, bos=0, num_samples=4, seed=0)"])
def test_first_call_backend_import_is_not_timed(search):
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = _SLOW_IMPORT.replace("d.SEARCH(lm)", "d." + search)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["imported"]                          # the compiled backend was used
    if r["imported_in_call"]:                     # a lazy import: inside the call, not timed
        assert r["call"] >= 1.0
    assert r["kernel"] < 0.5 and r["total"] < 0.5, r
