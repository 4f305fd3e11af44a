"""fastdl's ``generate`` against Hugging Face ``generate`` on tiny random GPT-2s.

Left-padded prompt batches (1 and 4 prompts of different lengths), greedy and beam
search over HF's options; both sides see the same float32 logits (fastdl gets the
GPT-2 as a callable LM over the full padded prefixes, HF runs without its cache), so
sequences must agree exactly and scores to float32 rounding.  Also: the default
arguments, the streamer protocol, and bad input.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fastdl.decode import generate  # noqa: E402

from _generate_hf_helpers import (BOS, EOS_A, EOS_B, N_POSITIONS, PAD, PROMPTS, V,  # noqa: E402
                                  WRAPPERS, FullPrefixLM, Recorder, cached, gpt2, grow,
                                  hf_generate, left_pad, set_torch_threads)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from set_torch_threads()


@pytest.fixture(scope="module")
def models():
    return {(seed, boost): gpt2(seed, boost) for seed in (0, 1) for boost in (0.0, 0.3, 0.5, 0.7)}


def _eos_set(eos):
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _unfinished(seq, P, eos):
    """(steps, rows) bool: row still running before step t (no generated eos yet)."""
    gen = seq[:, P:]
    hit = np.isin(gen, sorted(_eos_set(eos)))
    before = np.cumsum(hit, axis=1) - hit
    return (before == 0).T


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _compare(got, want, *, P, beam, eos):
    """fastdl's GenerateOutput against HF's dict output for the same call."""
    want_seq = want.sequences.numpy()
    assert isinstance(got.sequences, np.ndarray) and got.sequences.dtype == np.int64
    np.testing.assert_array_equal(got.sequences, want_seq)
    assert got.scores is not None and len(got.scores) == len(want.scores)
    live = None if beam else _unfinished(want_seq, P, eos)
    for t, (g, w) in enumerate(zip(got.scores, want.scores)):
        g, w = np.asarray(g), w.numpy()
        assert g.shape == w.shape, t
        # rows of prompts that are already done may be -inf on fastdl's side
        defined = np.isfinite(g).any(axis=1)
        if t == 0:
            assert defined.all()
        if live is not None:
            assert defined[live[t]].all(), t
        np.testing.assert_allclose(g[defined], w[defined], rtol=1e-5, atol=1e-5,
                                   err_msg=f"step {t}")
    if beam:
        np.testing.assert_allclose(got.sequences_scores, want.sequences_scores.numpy(),
                                   rtol=2e-6, atol=2e-6)
        if got.beam_indices is not None:
            np.testing.assert_array_equal(np.asarray(got.beam_indices), want.beam_indices.numpy())
    else:
        # HF gives no sequence score for greedy; fastdl's is the sum of the
        # log-softmaxed processed scores of the generated tokens (eos included)
        expect = np.zeros(want_seq.shape[0])
        for t, w in enumerate(want.scores):
            lsm = _log_softmax(w.numpy())
            rows = np.flatnonzero(live[t])
            expect[rows] += lsm[rows, want_seq[rows, P + t]]
        np.testing.assert_allclose(got.sequences_scores, expect, rtol=1e-5, atol=1e-5)


def _same_without_scores(got, plain):
    # without output_scores the search may take other paths (no processed copy of the
    # scores): the same result all the same
    assert plain.scores is None
    np.testing.assert_array_equal(plain.sequences, got.sequences)
    np.testing.assert_allclose(plain.sequences_scores, got.sequences_scores, rtol=2e-6, atol=2e-6)


# -- the harness itself ---------------------------------------------------------------

@pytest.mark.parametrize("batch", [1, 4])
def test_padded_callable_gives_the_logits_hf_generate_sees(models, batch):
    # HF's greedy scores (no processors) are the model's raw logits at each step; the
    # callable must give exactly those on HF's own prefixes, or nothing below means much
    model = models[0, 0.5]
    ids, mask = left_pad(PROMPTS[batch])
    out = hf_generate(model, ids, mask, max_new_tokens=5, do_sample=False, eos_token_id=None,
                      pad_token_id=PAD)
    seq, lm = out.sequences.numpy(), FullPrefixLM(model)
    P = ids.shape[1]
    for t, s in enumerate(out.scores):
        np.testing.assert_array_equal(lm(seq[:, :P + t], grow(mask, t)), s.numpy())
    # with its cache HF's logits differ only by float32 rounding
    cached = hf_generate(model, ids, mask, max_new_tokens=5, do_sample=False, eos_token_id=None,
                         pad_token_id=PAD, use_cache=True)
    for a, b in zip(cached.scores, out.scores):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


# -- greedy ---------------------------------------------------------------------------

def _greedy_cases():
    extras = [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 2},
              {"min_new_tokens": 3}, {"repetition_penalty": 0.7, "no_repeat_ngram_size": 3}]
    for i, (batch, eos) in enumerate(itertools.product([1, 4], [None, EOS_A, [EOS_A, EOS_B]])):
        for j in (0, 1):
            yield dict(seed=(i + j) % 2, boost=0.0 if eos is None else (0.3, 0.5)[j], batch=batch,
                       eos=eos,
                       max_new_tokens=4 + (i + j) % 3, **extras[(2 * i + j) % len(extras)])
    # every row ends before max_new_tokens, at different steps (the output is narrower
    # than max_new_tokens and still padded)
    yield dict(seed=0, boost=0.7, batch=4, eos=[EOS_A, EOS_B], max_new_tokens=8)


GREEDY = list(_greedy_cases())


def _greedy_params():
    for c in GREEDY:
        yield pytest.param(c)


def _ids(c):
    return "-".join(f"{k}={v}" for k, v in c.items())


def _kw(c):
    kw = {k: v for k, v in c.items() if k not in ("seed", "boost", "batch", "eos", "pad")}
    return dict(kw, eos_token_id=c["eos"], pad_token_id=c.get("pad", PAD))


def _prompts(c):
    # "pad": the padding token of the prompts and of finished rows (None: padded with
    # PAD but pad_token_id not given)
    return left_pad(PROMPTS[c["batch"]], pad=c.get("pad") or PAD)


@pytest.mark.parametrize("wrap", WRAPPERS)
@pytest.mark.parametrize("c", list(_greedy_params()), ids=_ids)
def test_greedy_equals_hf(models, wrap, c):
    model = models[c["seed"], c["boost"]]
    ids, mask = _prompts(c)
    ids0, mask0 = ids.copy(), mask.copy()
    want = hf_generate(model, ids, mask, do_sample=False, num_beams=1, use_cache=cached(wrap),
                       **_kw(c))
    got = generate(wrap(model), ids, attention_mask=mask, output_scores=True, **_kw(c))
    _compare(got, want, P=ids.shape[1], beam=False, eos=c["eos"])
    _same_without_scores(got, generate(wrap(model), ids, attention_mask=mask, **_kw(c)))
    np.testing.assert_array_equal(ids, ids0)          # the caller's arrays are not changed
    np.testing.assert_array_equal(mask, mask0)


# -- beam search ----------------------------------------------------------------------

def _beam_cases():
    # every early_stopping x length_penalty x eos combination, with the beam widths,
    # prompt batches, lengths, return counts and logits processors spread over them
    # five extras against the two batches' alternation: each extra meets both batches
    extras = [{}, {"no_repeat_ngram_size": 2}, {"min_new_tokens": 2}, {"repetition_penalty": 1.3},
              {"repetition_penalty": 0.8, "no_repeat_ngram_size": 3}]
    combos = itertools.product([False, True, "never"], [1.0, 0.0, -0.5, 2.0],
                               [EOS_A, [EOS_A, EOS_B]])
    for i, (early, alpha, eos) in enumerate(combos):
        nb = 2 + i % 3 if i % 7 else 1
        yield dict(seed=i % 2, boost=(0.5, 0.3, 0.7)[i % 3], batch=4 if i % 2 == 0 else 1,
                   num_beams=nb, max_new_tokens=3 + (i // 2) % 4, early_stopping=early,
                   length_penalty=alpha, num_return_sequences=1 + (i // 3) % nb, eos=eos,
                   **extras[i % len(extras)])
    # no eos at all: every beam runs to max_new_tokens
    for nb, early in ((2, False), (4, True)):
        yield dict(seed=1, boost=0.0, batch=4, num_beams=nb, max_new_tokens=4,
                   early_stopping=early, length_penalty=1.0, num_return_sequences=nb, eos=None)
    # settings where "never" (the best live score at max_new_tokens' length), False (at
    # the current length) and True (stop when the finished list is full) give other results
    for (seed, boost, batch, nb, T, alpha, eos), early in itertools.product(
            [(0, 0.3, 1, 3, 6, 1.0, EOS_A), (0, 0.3, 4, 4, 6, 1.0, [EOS_A, EOS_B]),
             (0, 0.5, 1, 2, 4, 2.0, EOS_A)], ["never", False, True]):
        yield dict(seed=seed, boost=boost, batch=batch, num_beams=nb, max_new_tokens=T,
                   early_stopping=early, length_penalty=alpha, num_return_sequences=nb, eos=eos)
    # padding with a token the model generates (15): HF's n-grams run over the padded
    # row (a generated 15 bans what followed the padding), its repetition penalty skips it
    for nb, extra in itertools.product((1, 3), [{"no_repeat_ngram_size": 2},
                                               {"repetition_penalty": 1.3}]):
        yield dict(seed=0, boost=0.3, batch=4, num_beams=nb, max_new_tokens=5,
                   early_stopping=False, length_penalty=1.0, num_return_sequences=1, eos=EOS_A,
                   pad=15, **extra)
    # pad not given: HF pads with the first eos
    yield dict(seed=0, boost=0.5, batch=4, num_beams=3, max_new_tokens=5, early_stopping=False,
               length_penalty=1.0, num_return_sequences=2, eos=[EOS_B, EOS_A], pad=None)


BEAM = list(_beam_cases())


@pytest.mark.parametrize("wrap", WRAPPERS)
@pytest.mark.parametrize("c", BEAM, ids=_ids)
def test_beam_search_equals_hf(models, wrap, c):
    model = models[c["seed"], c["boost"]]
    ids, mask = _prompts(c)
    want = hf_generate(model, ids, mask, do_sample=False, use_cache=cached(wrap), **_kw(c))
    got = generate(wrap(model), ids, attention_mask=mask, output_scores=True, **_kw(c))
    _compare(got, want, P=ids.shape[1], beam=c["num_beams"] > 1, eos=c["eos"])
    _same_without_scores(got, generate(wrap(model), ids, attention_mask=mask, **_kw(c)))


def test_grid_has_early_eos(models):
    # the comparisons above are only worth something if rows finish at different times:
    # many end with eos before max_new_tokens, many run to it
    ended = total = 0
    for c in BEAM + GREEDY:
        if c["eos"] is None:
            continue
        ids, mask = _prompts(c)
        seq = hf_generate(models[c["seed"], c["boost"]], ids, mask, do_sample=False,
                          **_kw(c)).sequences.numpy()[:, ids.shape[1]:]
        hit = np.isin(seq[:, :c["max_new_tokens"] - 1], sorted(_eos_set(c["eos"]))).any(axis=1)
        ended += hit.sum()
        total += len(hit)
    assert total // 4 <= ended <= total - total // 4, (ended, total)


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_list_prompts_equal_the_padded_array(models, wrap):
    model = models[1, 0.5]
    ids, mask = left_pad(PROMPTS[4])
    kw = dict(max_new_tokens=4, num_beams=3, num_return_sequences=2, eos_token_id=EOS_A,
              pad_token_id=PAD)
    a = generate(wrap(model), ids, attention_mask=mask, **kw)
    b = generate(wrap(model), [list(p) for p in PROMPTS[4]], **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.sequences_scores, b.sequences_scores)


# -- default arguments ----------------------------------------------------------------

def _configured(seed):
    # HF takes eos/pad/bos from model.generation_config; fastdl from the lm's attributes
    model = gpt2(seed, 0.5, eos=EOS_A, pad=PAD)
    attrs = dict(eos_token_id=EOS_A, pad_token_id=PAD, bos_token_id=BOS)
    return model, attrs


def _default_lm(wrap, model, attrs):
    # the wrapper reads them from model.generation_config itself
    return FullPrefixLM(model, **attrs) if wrap is FullPrefixLM else wrap(model)


@pytest.mark.parametrize("wrap", WRAPPERS)
@pytest.mark.parametrize("num_beams", [None, 2, 4])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_default_arguments_give_hf_default_result(wrap, num_beams, batch, seed):
    model, attrs = _configured(seed)
    ids, mask = left_pad(PROMPTS[batch])
    kw = {} if num_beams is None else {"num_beams": num_beams}
    with torch.no_grad():   # HF exactly as a user calls it: its cache, its defaults
        want = model.generate(input_ids=torch.from_numpy(ids),
                              attention_mask=torch.from_numpy(mask), max_new_tokens=6, **kw)
    got = generate(_default_lm(wrap, model, attrs), ids, attention_mask=mask, max_new_tokens=6,
                   **kw)
    np.testing.assert_array_equal(got.sequences, want.numpy())


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_no_prompt_starts_from_bos(wrap):
    model, attrs = _configured(0)
    with torch.no_grad():
        want = model.generate(max_new_tokens=6)
    got = generate(_default_lm(wrap, model, attrs), max_new_tokens=6)
    np.testing.assert_array_equal(got.sequences, want.numpy())
    assert got.sequences[0, 0] == BOS


# -- streamer -------------------------------------------------------------------------

@pytest.mark.parametrize("wrap", WRAPPERS)
@pytest.mark.parametrize("batch", [1, 4])
def test_streamer_receives_what_hf_streams(models, wrap, batch):
    model = models[0, 0.5]
    ids, mask = left_pad(PROMPTS[batch])
    kw = dict(max_new_tokens=6, eos_token_id=EOS_A, pad_token_id=PAD)
    hf_rec, rec = Recorder(), Recorder()
    out = hf_generate(model, ids, mask, do_sample=False, streamer=hf_rec, use_cache=cached(wrap),
                      **kw)
    got = generate(wrap(model), ids, attention_mask=mask, streamer=rec, **kw)
    np.testing.assert_array_equal(got.sequences, out.sequences.numpy())
    assert rec.ends == hf_rec.ends == 1
    assert len(rec.puts) == len(hf_rec.puts) == 1 + got.sequences.shape[1] - ids.shape[1]
    np.testing.assert_array_equal(rec.puts[0], ids)    # the prompt first, as HF
    for a, b in zip(rec.puts, hf_rec.puts):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_streamer_with_sampling_streams_the_sampled_tokens(models):
    ids, mask = left_pad(PROMPTS[4])
    rec = Recorder()
    got = generate(FullPrefixLM(models[1, 0.5]), ids, attention_mask=mask, max_new_tokens=5,
                   do_sample=True, seed=3, eos_token_id=EOS_A, pad_token_id=PAD, streamer=rec)
    assert rec.ends == 1
    np.testing.assert_array_equal(rec.puts[0], ids)
    np.testing.assert_array_equal(np.stack(rec.puts[1:], axis=1), got.sequences[:, ids.shape[1]:])


def test_callable_streamer_gets_each_new_token_batch(models):
    ids, mask = left_pad(PROMPTS[4])
    seen = []
    got = generate(FullPrefixLM(models[0, 0.0]), ids, attention_mask=mask, max_new_tokens=4,
                   streamer=lambda toks: seen.append(np.array(toks)))
    new = got.sequences[:, ids.shape[1]:]
    assert len(seen) == new.shape[1]
    np.testing.assert_array_equal(np.stack(seen, axis=1), new)


def test_streamer_with_beam_search_is_refused(models):
    ids, mask = left_pad(PROMPTS[1])
    with pytest.raises(ValueError, match="streamer"):
        generate(FullPrefixLM(models[0, 0.0]), ids, attention_mask=mask, max_new_tokens=3,
                 num_beams=2, streamer=Recorder())
    with pytest.raises(ValueError):   # HF refuses it too
        hf_generate(models[0, 0.0], ids, mask, max_new_tokens=3, num_beams=2, streamer=Recorder())


# -- bad input ------------------------------------------------------------------------

def _bad(models, match, ids=None, wrap=FullPrefixLM, **kw):
    if ids is None:
        ids, mask = left_pad(PROMPTS[4])
        kw.setdefault("attention_mask", mask)
    kw.setdefault("max_new_tokens", 3)
    with pytest.raises(ValueError, match=match):
        generate(wrap(models[0, 0.0]), ids, **kw)


def test_mask_shape_not_matching(models):
    ids, mask = left_pad(PROMPTS[4])
    _bad(models, "attention_mask", ids, attention_mask=mask[:, 1:], pad_token_id=PAD)
    _bad(models, "attention_mask", ids, attention_mask=mask[:3], pad_token_id=PAD)
    _bad(models, "attention_mask", ids, attention_mask=mask.ravel(), pad_token_id=PAD)


def test_mask_values_and_padding_side(models):
    ids, mask = left_pad(PROMPTS[4])
    two = mask.copy()
    two[0, -1] = 2
    _bad(models, "attention_mask", ids, attention_mask=two, pad_token_id=PAD)
    right = mask[:, ::-1].copy()                      # right padding
    _bad(models, "attention_mask", ids, attention_mask=right, pad_token_id=PAD)
    empty = mask.copy()
    empty[1] = 0                                      # a row without a single token
    _bad(models, "attention_mask", ids, attention_mask=empty, pad_token_id=PAD)


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_prompt_longer_than_the_model_allows(models, wrap):
    ids = np.full((2, N_POSITIONS + 1), 5, np.int64)
    _bad(models, "input_ids", ids, wrap, attention_mask=np.ones_like(ids), pad_token_id=PAD)


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_pad_missing_when_needed(models, wrap):
    # prompts of different lengths must be padded: no pad and no eos to fall back on
    _bad(models, "pad_token_id", [list(p) for p in PROMPTS[4]], wrap)


@pytest.mark.parametrize("wrap", WRAPPERS)
def test_eos_outside_the_vocabulary(models, wrap):
    for eos in (V, -1, [EOS_A, V + 3]):
        _bad(models, "eos_token_id", wrap=wrap, eos_token_id=eos, pad_token_id=PAD)
    _bad(models, "pad_token_id", wrap=wrap, eos_token_id=EOS_A, pad_token_id=V)


def test_bos_missing(models):
    with pytest.raises(ValueError, match="bos_token_id"):   # no prompt and no bos
        generate(FullPrefixLM(models[0, 0.0]), max_new_tokens=2)


def test_bos_outside_the_vocabulary(models):
    with pytest.raises(ValueError, match="bos_token_id"):
        generate(FullPrefixLM(models[0, 0.0]), max_new_tokens=2, bos_token_id=V)


def test_early_stopping_value(models):
    _bad(models, "early_stopping", num_beams=2, early_stopping="sometimes", pad_token_id=PAD)


def test_return_count_not_possible(models):
    _bad(models, "num_return_sequences", num_beams=2, num_return_sequences=3, pad_token_id=PAD)
    _bad(models, "num_return_sequences", num_return_sequences=2, pad_token_id=PAD)


def test_pad_zero_in_beam_search_is_a_deliberate_difference(models):
    # Hugging Face's beam search fills finished sequences with `pad or eos[0]` of a tensor
    # pad id, so pad_token_id=0 pads with the first eos; fastdl pads with pad_token_id.
    model = models[(0, 0.7)]
    ids, mask = left_pad(PROMPTS[4], pad=0)
    kw = dict(max_new_tokens=8, num_beams=3, num_return_sequences=3, eos_token_id=EOS_A,
              pad_token_id=0)
    want = hf_generate(model, ids, mask, do_sample=False, **kw).sequences.numpy()
    got = generate(FullPrefixLM(model), ids, attention_mask=mask, **kw).sequences
    P = ids.shape[1]
    ended = np.cumsum(got[:, P:] == EOS_A, axis=1) - (got[:, P:] == EOS_A) > 0
    assert ended.any()                                   # some sequence ends early
    assert (want[:, P:][ended] == EOS_A).all() and (got[:, P:][ended] == 0).all()
    assert (want[:, P:][~ended] == got[:, P:][~ended]).all() and (want[:, :P] == got[:, :P]).all()
