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

V, BOS, PAD = 40, 0, 39
EOS_A, EOS_B = 1, 2


def _gpt2(seed, eos_boost):
    """A 2-layer GPT-2 over V tokens; ``eos_boost`` raises the logits of tokens 1 and 2."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=BOS, eos_token_id=None, pad_token_id=PAD,
                                  initializer_range=0.3, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        # hidden unit 0 of the final layer norm is ~3 for every position; only the
        # eos rows of the head read it
        model.transformer.ln_f.bias[0] = 3.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[EOS_A, 0] = eos_boost
        model.lm_head.weight[EOS_B, 0] = 0.8 * eos_boost
    return model


class GPT2LM:
    """The GPT-2 as a fastdl model: full prefixes in, float32 log-probs of the next token out."""

    vocab_size = V

    def __init__(self, model):
        self.model = model

    def __call__(self, prefixes):
        x = torch.from_numpy(prefixes)
        with torch.no_grad():
            logits = self.model(input_ids=x, attention_mask=torch.ones_like(x),
                                use_cache=False).logits[:, -1, :].float()
            return torch.log_softmax(logits, dim=-1).numpy()


@pytest.fixture(scope="module")
def models():
    # these models are tiny: one torch thread is fastest, and far faster on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {(seed, boost): _gpt2(seed, boost) for seed in (0, 1) for boost in (0.0, 1.6)}
    finally:
        torch.set_num_threads(threads)


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
    lm = GPT2LM(models[c["seed"], c["boost"]])
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
        (h,) = greedy(GPT2LM(model), 6, bos=BOS, eos=eos)
        assert h.tokens == _strip(out[0], set(eos or ()), 6)


def test_grid_has_finished_beams(models):
    # the comparison above is only worth something if eos hypotheses are common
    n_eos = sum(any(h.tokens[-1] in (EOS_A, EOS_B) for h in _fastdl(models, c)) for c in CASES
                if c["eos"])
    assert n_eos >= len([c for c in CASES if c["eos"]]) // 2
