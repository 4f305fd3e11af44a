"""``generate``'s sampling filters and logits processors against Hugging Face's.

Sampled tokens cannot be compared with HF's (the random streams differ), so the
scores are: at the first step against HF ``generate(do_sample=True,
output_scores=True)`` on the same prompts, and at every step against HF's own
processor classes applied to the raw logits of fastdl's prefixes.  A model with
few distinct logit values puts ties at the k-th value of top-k.
"""
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.generation import logits_process as lp  # noqa: E402

from fastdl.decode import generate  # noqa: E402

from _generate_hf_helpers import (EOS_A, EOS_B, PAD, PROMPTS, WRAPPERS,  # noqa: E402
                                  FullPrefixLM, cached, gpt2, grow, hf_generate, left_pad,
                                  set_torch_threads)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from set_torch_threads()


@pytest.fixture(scope="module")
def models():
    return {seed: gpt2(seed, 0.5) for seed in (0, 1)}


def hf_processors(mask, *, temperature=1.0, top_k=50, top_p=1.0, min_p=None, repetition_penalty=1.0,
                  no_repeat_ngram_size=0, min_new_tokens=0, eos_token_id=None):
    """HF's processors then warpers, in the order ``_get_logits_processor`` builds them
    (checked against ``generate`` by test_processor_list_is_what_hf_generate_applies).

    ``mask``: the prompts' attention mask; as ``generate``, the repetition penalty skips
    the left padding.
    """
    P = mask.shape[1]
    out = lp.LogitsProcessorList()
    if repetition_penalty != 1.0:
        pads = torch.from_numpy((mask != 0).argmax(axis=1)) if (mask == 0).any() else None
        out.append(lp.RepetitionPenaltyLogitsProcessor(float(repetition_penalty),
                                                       prompt_ignore_length=pads))
    if no_repeat_ngram_size:
        out.append(lp.NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if min_new_tokens:
        out.append(lp.MinNewTokensLengthLogitsProcessor(P, min_new_tokens, eos_token_id))
    if temperature != 1.0:
        out.append(lp.TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(lp.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        out.append(lp.TopPLogitsWarper(top_p))
    if min_p is not None:
        out.append(lp.MinPLogitsWarper(min_p))
    return out


def _apply(procs, seqs, logits):
    with torch.no_grad():
        return procs(torch.from_numpy(np.ascontiguousarray(seqs)),
                     torch.from_numpy(np.array(logits, np.float32))).numpy()


FILTERS = [
    dict(temperature=0.7),
    dict(temperature=1.6),
    dict(top_k=5),
    dict(top_k=1),
    dict(top_p=0.8),
    dict(top_p=0.3),
    dict(min_p=0.1),
    dict(min_p=0.3),
    dict(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05),
    dict(temperature=1.3, top_k=20, top_p=0.7),
    dict(repetition_penalty=1.3, temperature=0.9, top_k=8),
    dict(no_repeat_ngram_size=2, min_new_tokens=2, top_p=0.9),
]


def _ids(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def _assert_scores(got, want, msg):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, msg
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg=msg)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=msg)


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")   # min_new_tokens > 1 step
@pytest.mark.parametrize("wrap", WRAPPERS)
@pytest.mark.parametrize("c", FILTERS, ids=_ids)
def test_first_step_scores_equal_hf_sampling_scores(models, wrap, c):
    # HF's sampling scores are the processed and warped logits
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(c, eos_token_id=[EOS_A, EOS_B], pad_token_id=PAD)
    torch.manual_seed(0)
    want = hf_generate(models[0], ids, mask, do_sample=True, max_new_tokens=1,
                       use_cache=cached(wrap), **kw)
    got = generate(wrap(models[0]), ids, attention_mask=mask, do_sample=True,
                   max_new_tokens=1, seed=0, output_scores=True, **kw)
    _assert_scores(got.scores[0], want.scores[0].numpy(), "step 0")


@pytest.mark.parametrize("c", FILTERS, ids=_ids)
def test_processor_list_is_what_hf_generate_applies(models, c):
    # the reference list below must be HF generate's own, or the all-steps test means little
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(c, eos_token_id=[EOS_A, EOS_B])
    torch.manual_seed(1)
    out = hf_generate(models[1], ids, mask, do_sample=True, max_new_tokens=4, pad_token_id=PAD,
                      **kw)
    seq, lm, P = out.sequences.numpy(), FullPrefixLM(models[1]), ids.shape[1]
    procs = hf_processors(mask, **kw)
    for t, s in enumerate(out.scores):
        _assert_scores(_apply(procs, seq[:, :P + t], lm(seq[:, :P + t], grow(mask, t))),
                       s.numpy(), f"step {t}")


def _check_all_steps(lm, ids, mask, got, procs, eos, pad=PAD):
    """Every step's scores are HF's processors on the raw logits of fastdl's own
    prefixes; every sampled token has a finite score; the sequence score is the sum
    of the log-softmaxed scores of the generated tokens."""
    seq, P = got.sequences, ids.shape[1]
    np.testing.assert_array_equal(seq[:, :P], ids)
    assert len(got.scores) == seq.shape[1] - P
    live = np.ones(seq.shape[0], bool)
    total = np.zeros(seq.shape[0])
    for t, s in enumerate(got.scores):
        s = np.asarray(s)
        want = _apply(procs, seq[:, :P + t], lm(seq[:, :P + t], grow(mask, t)))
        _assert_scores(s[live], want[live], f"step {t}")
        tok = seq[:, P + t]
        assert np.isfinite(want[live, tok[live]]).all(), f"step {t}: a filtered token was drawn"
        x = want[live].astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        lsm = x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
        total[live] += lsm[np.arange(live.sum()), tok[live]]
        assert (tok[~live] == pad).all(), "finished rows are padded"
        live &= ~np.isin(tok, eos)
    np.testing.assert_allclose(got.sequences_scores, total, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c", FILTERS, ids=_ids)
def test_every_step_scores_equal_hf_processors(models, c):
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(c, eos_token_id=[EOS_A, EOS_B])
    lm = FullPrefixLM(models[1])
    got = generate(lm, ids, attention_mask=mask, do_sample=True, max_new_tokens=5, seed=7,
                   output_scores=True, pad_token_id=PAD, **kw)
    _check_all_steps(lm, ids, mask, got, hf_processors(mask, **kw), [EOS_A, EOS_B])


class TiedLM:
    """Logits from a hash of the prefix, quantized to ``levels`` values over N tokens,
    so many tokens tie, at the k-th value of top-k too.  Ignores the mask (the prompt
    rows are unpadded here)."""

    normalized = False

    def __init__(self, N, levels, seed=0):
        self.vocab_size, self.levels, self.seed = N, levels, seed

    def __call__(self, prefixes, attention_mask=None):
        rows = []
        for p in np.asarray(prefixes).tolist():
            h = zlib.crc32(repr((self.seed, p)).encode())
            r = np.random.default_rng(h).integers(0, self.levels, self.vocab_size)
            rows.append(r.astype(np.float32) * np.float32(0.75))
        return np.stack(rows)


def _tied_prompts(N):
    ids = np.array([[3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14]], np.int64) % N
    return ids, np.ones_like(ids)


@pytest.mark.parametrize("c", [dict(top_k=3), dict(top_k=7), dict(top_k=7, temperature=0.6),
                               dict(min_p=0.4), dict(top_k=12, min_p=0.2)], ids=_ids)
def test_ties_at_the_kth_value_stay_as_in_hf(c):
    lm = TiedLM(30, levels=5)
    ids, mask = _tied_prompts(30)
    first = lm(ids)
    kth = -np.sort(-first, axis=1)[:, c.get("top_k", 1) - 1]
    assert ((first == kth[:, None]).sum(axis=1) > 1).any()     # the tie is really there
    got = generate(lm, ids, attention_mask=mask, do_sample=True, max_new_tokens=4, seed=11,
                   output_scores=True, eos_token_id=EOS_A, pad_token_id=29, **c)
    _check_all_steps(lm, ids, mask, got, hf_processors(mask, **c), [EOS_A], pad=29)


def test_default_top_k_is_50():
    # with N > 50 HF's default top_k=50 filters even when no filter is asked for
    lm = TiedLM(80, levels=40, seed=3)
    ids, mask = _tied_prompts(80)
    got = generate(lm, ids, attention_mask=mask, do_sample=True, max_new_tokens=3, seed=5,
                   output_scores=True, eos_token_id=EOS_A, pad_token_id=79)
    first = np.asarray(got.scores[0])
    assert (np.isneginf(first).sum(axis=1) >= 80 - 50 - 10).all()   # filtered (up to ties)
    _check_all_steps(lm, ids, mask, got, hf_processors(mask), [EOS_A], pad=79)


def test_samples_follow_the_processed_distribution(models):
    # 4000 rows of one prompt, one step: the token frequencies are softmax(processed scores)
    prompt = np.array([PROMPTS[1][0]] * 4000, np.int64)
    got = generate(FullPrefixLM(models[0]), prompt, attention_mask=np.ones_like(prompt),
                   do_sample=True, max_new_tokens=1, seed=2, output_scores=True, temperature=1.5,
                   top_k=12, eos_token_id=EOS_A, pad_token_id=PAD)
    s = np.asarray(got.scores[0][0], np.float64)
    p = np.exp(s - s.max())
    p /= p.sum()
    freq = np.bincount(got.sequences[:, -1], minlength=p.size) / len(prompt)
    sigma = np.sqrt(p * (1 - p) / len(prompt))
    assert (freq[p == 0] == 0).all()
    assert (np.abs(freq - p) <= 5 * sigma + 1e-12).all(), np.c_[freq, p][p > 0]


def test_same_seed_same_samples(models):
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(attention_mask=mask, do_sample=True, max_new_tokens=5, top_p=0.9,
              eos_token_id=EOS_A, pad_token_id=PAD)
    a = generate(FullPrefixLM(models[0]), ids, seed=4, **kw)
    b = generate(FullPrefixLM(models[0]), ids, seed=4, **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.sequences_scores, b.sequences_scores)


def test_sampling_num_return_sequences_rows(models):
    # HF's layout: the samples of each prompt are adjacent rows
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(do_sample=True, num_return_sequences=3, top_k=10, eos_token_id=[EOS_A, EOS_B],
              pad_token_id=PAD)
    lm = FullPrefixLM(models[0])
    got = generate(lm, ids, attention_mask=mask, max_new_tokens=4, seed=9, output_scores=True,
                   **kw)
    torch.manual_seed(0)
    want = hf_generate(models[0], ids, mask, max_new_tokens=1, **kw)
    _assert_scores(got.scores[0], want.scores[0].numpy(), "step 0")
    rids, rmask = np.repeat(ids, 3, axis=0), np.repeat(mask, 3, axis=0)
    _check_all_steps(lm, rids, rmask, got, hf_processors(rmask, top_k=10), [EOS_A, EOS_B])


def test_sampling_rows_all_ending_early():
    # top_k=1 makes sampling greedy; on this model every row ends before max_new_tokens,
    # each at another step, so the output is narrower than max_new_tokens and padded
    model = gpt2(0, 0.7)
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(eos_token_id=[EOS_A, EOS_B], pad_token_id=PAD, max_new_tokens=8)
    want = hf_generate(model, ids, mask, do_sample=False, **kw)
    assert want.sequences.shape[1] < ids.shape[1] + 8
    lm = FullPrefixLM(model)
    got = generate(lm, ids, attention_mask=mask, do_sample=True, top_k=1, seed=0,
                   output_scores=True, **kw)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    _check_all_steps(lm, ids, mask, got, hf_processors(mask, top_k=1), [EOS_A, EOS_B])


@pytest.mark.parametrize("c", [dict(top_k=1), dict(top_p=0.2), dict(min_p=0.6),
                               dict(temperature=0.7, top_k=5),
                               dict(repetition_penalty=1.3, top_k=4)], ids=_ids)
def test_beam_sampling_first_step_scores_equal_hf(models, c):
    # beam search with do_sample: HF's warpers on the log-probs, keeping at least
    # len(eos) + 1 tokens so a beam can continue past eos
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(num_beams=3, do_sample=True, max_new_tokens=1, eos_token_id=[EOS_A, EOS_B],
              pad_token_id=PAD, **c)
    torch.manual_seed(0)
    want = hf_generate(models[0], ids, mask, **kw)
    got = generate(FullPrefixLM(models[0]), ids, attention_mask=mask, output_scores=True,
                   seed=0, **kw)
    _assert_scores(got.scores[0], want.scores[0].numpy(), "step 0")
