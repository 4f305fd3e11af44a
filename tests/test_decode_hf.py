"""fastdl's beam_search and greedy against Hugging Face ``generate`` on tiny random GPT-2s.

The models are built from ``GPT2Config`` with seeded random weights (nothing is
downloaded).  One hidden unit is made constant and wired to the eos logits, so that
hypotheses often end early and the finished list matters.  Both sides see the same
float32 log-probabilities: the fastdl model is the GPT-2 itself, called on whole
prefixes, so tokens must agree exactly and scores to float32 rounding.
"""
import itertools

import numpy as np
import pytest

from fastdl.decode import beam_search, greedy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _generate_hf_helpers import (BOS, EOS_A, EOS_B, PAD, FullPrefixLM, gpt2,  # noqa: E402
                                  set_torch_threads)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from set_torch_threads()


@pytest.fixture(scope="module")
def models():
    return {(seed, boost): gpt2(seed, boost, pad=PAD) for seed in (0, 1) for boost in (0.0, 1.6)}


def _hf(model, eos, **kw):
    ids = torch.full((1, 1), BOS, dtype=torch.long)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              eos_token_id=eos, pad_token_id=PAD, use_cache=False, **kw)


def _strip(row, eos, T):
    """HF's row (⟨BOS⟩, generated tokens, then padding) as fastdl's tokens."""
    toks = row[1:].tolist()
    ends = [i for i, t in enumerate(toks) if t in eos]
    return tuple(toks[:ends[0] + 1] if ends else toks[:T])


def _cases():
    # every early_stopping / length-penalty / eos combination, with beam widths, lengths,
    # num_return and the bans spread over them (a full product would be slow)
    combos = itertools.product([True, False, "never"], [0.0, 1.0, 2.0, -0.5],
                               [None, [EOS_A], [EOS_A, EOS_B]], [0.0, 1.6])
    for i, (early, alpha, eos, boost) in enumerate(combos):
        if eos is None and boost:
            continue                      # without eos the boost changes nothing
        B = 2 + i % 3
        T = 3 + (i // 3) % 3
        extra = [{}, {}, {"min_len": 2}, {"no_repeat_ngram_size": 2}][i % 4] if eos else {}
        yield dict(seed=i % 2, boost=boost, B=B, T=T, early=early, alpha=alpha, eos=eos,
                   num_return=1 + (i // 2) % B, **extra)
    # the finished list fills at the last step: every one of the best B candidates ends
    # there, eos or not (a search that stops before adding the max_len ones loses them)
    for seed, B, alpha in itertools.product((0, 1), (2, 3, 4), (0.0, 1.0)):
        yield dict(seed=seed, boost=1.6, B=B, T=3, early=True, alpha=alpha, eos=[EOS_A],
                   num_return=B)


CASES = list(_cases())


_RESULTS = {}


def _fastdl(models, c):
    key = repr(sorted(c.items()))
    if key not in _RESULTS:
        _RESULTS[key] = _run_fastdl(models, c)
    return _RESULTS[key]


def _run_fastdl(models, c):
    lm = FullPrefixLM(models[c["seed"], c["boost"]], log_probs=True)
    return beam_search(lm, c["B"], c["T"], bos=BOS, eos=c["eos"], length_penalty=c["alpha"],
                       early_stopping=c["early"], num_return=c["num_return"],
                       min_len=c.get("min_len", 0),
                       no_repeat_ngram_size=c.get("no_repeat_ngram_size", 0))


@pytest.mark.parametrize("c", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_beam_search_equals_generate(models, c):
    model = models[c["seed"], c["boost"]]
    out = _hf(model, c["eos"], num_beams=c["B"], max_new_tokens=c["T"],
              early_stopping=c["early"], length_penalty=c["alpha"],
              num_return_sequences=c["num_return"], min_new_tokens=c.get("min_len", 0),
              no_repeat_ngram_size=c.get("no_repeat_ngram_size", 0),
              output_scores=True, return_dict_in_generate=True)
    eos = set(c["eos"] or ())
    want_toks = [_strip(r, eos, c["T"]) for r in out.sequences]
    want_scores = out.sequences_scores.tolist()
    got = _fastdl(models, c)
    assert [h.tokens for h in got] == want_toks
    # HF divides by the number of generated tokens, eos included: fastdl's len(tokens)
    assert [h.score for h in got] == pytest.approx(want_scores, rel=2e-6, abs=2e-6)
    for h, s in zip(got, want_scores):
        assert h.log_prob == pytest.approx(s * len(h.tokens) ** c["alpha"], rel=2e-6, abs=2e-6)


@pytest.mark.parametrize("boost", [0.0, 1.6])
@pytest.mark.parametrize("eos", [None, [EOS_A]])
def test_greedy_equals_generate(models, boost, eos):
    for seed in (0, 1):
        model = models[seed, boost]
        out = _hf(model, eos, num_beams=1, max_new_tokens=6)
        (h,) = greedy(FullPrefixLM(model, log_probs=True), 6, bos=BOS, eos=eos)
        assert h.tokens == _strip(out[0], set(eos or ()), 6)


def test_grid_has_finished_beams(models):
    # the comparison above is only worth something if eos hypotheses are common
    n_eos = sum(any(h.tokens[-1] in (EOS_A, EOS_B) for h in _fastdl(models, c)) for c in CASES
                if c["eos"])
    assert n_eos >= len([c for c in CASES if c["eos"]]) // 2
