"""``generate`` without torch: layout of the output, its agreement with the searches,
defaults taken from the model, streamers and argument checking.  (Its agreement with
Hugging Face's ``generate`` is in test_generate_hf.py.)"""
import numpy as np
import pytest

from fastdl.decode import beam_search, examples, generate, greedy
from fastdl.decode.prompts import prompts

N, EOS, PAD = 16, 1, 15
RAGGED = [[0, 3, 4, 5], [0, 7], [0, 2, 9, 9, 1]]


def _lm(**attrs):
    lm = examples.SyntheticLM(N, table_rows=31, seed=5)
    for k, v in attrs.items():
        setattr(lm, k, v)
    return lm


def _new(out, P):
    return out.sequences[:, P:]


def test_greedy_layout_and_agreement_with_greedy_search():
    p = prompts(RAGGED, pad=PAD)
    out = generate(_lm(), p.ids, attention_mask=p.mask, max_new_tokens=6, eos_token_id=EOS,
                   pad_token_id=PAD)
    assert out.sequences.dtype == np.int64 and out.beam_indices is None
    assert (out.sequences[:, :5] == p.ids).all()            # the prompts as given
    alone = greedy(_lm(), 6, prompt=p.ids, attention_mask=p.mask, eos=EOS)
    for r, hyps in enumerate(alone):
        toks = hyps[0].tokens
        new = _new(out, 5)[r].tolist()
        assert tuple(new[:len(toks)]) == toks
        assert all(t == PAD for t in new[len(toks):])      # padding after eos
        assert out.sequences_scores[r] == pytest.approx(hyps[0].log_prob, abs=1e-5)
    assert out.sequences.shape[1] == 5 + max(len(h[0].tokens) for h in alone)


def test_list_prompts_equal_the_padded_array():
    p = prompts(RAGGED, pad=PAD)
    a = generate(_lm(), RAGGED, max_new_tokens=5, eos_token_id=EOS, pad_token_id=PAD)
    b = generate(_lm(), p.ids, attention_mask=p.mask, max_new_tokens=5, eos_token_id=EOS,
                 pad_token_id=PAD)
    assert (a.sequences == b.sequences).all()


@pytest.mark.parametrize("B", [2, 4])
def test_beam_generate_equals_beam_search(B):
    p = prompts(RAGGED, pad=PAD)
    out = generate(_lm(), p.ids, attention_mask=p.mask, max_new_tokens=5, num_beams=B,
                   num_return_sequences=B, length_penalty=0.5, early_stopping="never",
                   eos_token_id=EOS, pad_token_id=PAD)
    ref = beam_search(_lm(), B, 5, prompt=p.ids, attention_mask=p.mask, eos=EOS,
                      length_penalty=0.5, early_stopping="never")
    assert out.sequences.shape[0] == len(RAGGED) * B
    for g, hyps in enumerate(ref):
        for i, h in enumerate(hyps):
            row = _new(out, 5)[g * B + i].tolist()
            assert tuple(row[:len(h.tokens)]) == h.tokens
            assert out.sequences_scores[g * B + i] == pytest.approx(h.score, abs=1e-5)
            bi = out.beam_indices[g * B + i]
            assert (bi[:len(h.tokens)] // B == g).all() and (bi[len(h.tokens):] == -1).all()


def test_defaults_come_from_the_model():
    lm = _lm(eos_token_id=EOS, pad_token_id=PAD, bos_token_id=0)
    a = generate(lm, max_new_tokens=6)                        # starts from [bos]
    b = generate(_lm(), [[0]], max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD)
    assert (a.sequences == b.sequences).all() and a.sequences[0, 0] == 0
    # no pad: the first eos pads, as in Hugging Face
    c = generate(_lm(), RAGGED, max_new_tokens=6, eos_token_id=[EOS, 2])
    assert c.sequences[1, 0] == EOS


def test_sampling_is_reproducible_and_returns_every_sequence():
    kw = dict(max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9, temperature=0.8,
              num_return_sequences=3, eos_token_id=EOS, pad_token_id=PAD)
    a = generate(_lm(), RAGGED, seed=7, **kw)
    b = generate(_lm(), RAGGED, seed=7, **kw)
    assert a.sequences.shape[0] == 9 and (a.sequences == b.sequences).all()
    assert (a.sequences[0:3, :5] == a.sequences[0, :5]).all()   # each prompt 3 times
    c = generate(_lm(), RAGGED, seed=8, **kw)
    assert (a.sequences != c.sequences).any() or a.sequences.shape != c.sequences.shape


def test_output_scores():
    p = prompts(RAGGED, pad=PAD)
    g = generate(_lm(), RAGGED, max_new_tokens=4, output_scores=True, pad_token_id=PAD)
    assert len(g.scores) == 4 and all(s.shape == (3, N) for s in g.scores)
    # greedy's scores are the model's logits (no processor here) and pick the argmax
    assert (np.argmax(g.scores[0], axis=1) == g.sequences[:, 5]).all()
    b = generate(_lm(), p.ids, attention_mask=p.mask, max_new_tokens=4, num_beams=3,
                 output_scores=True, eos_token_id=EOS, pad_token_id=PAD)
    assert all(s.shape == (9, N) for s in b.scores)
    np.testing.assert_allclose(np.exp(b.scores[0]).sum(axis=1), 1.0, rtol=1e-5)


class Recorder:
    def __init__(self):
        self.got, self.ended = [], False

    def put(self, value):
        self.got.append(np.array(value))

    def end(self):
        self.ended = True


def test_streamers():
    rec = Recorder()
    out = generate(_lm(), RAGGED, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD,
                   streamer=rec)
    assert rec.ended and (rec.got[0] == out.sequences[:, :5]).all()      # the prompt first
    steps = np.stack(rec.got[1:], axis=1)
    assert (steps == out.sequences[:, 5:5 + steps.shape[1]]).all()
    seen = []
    generate(_lm(), [[0, 3]], max_new_tokens=3, streamer=seen.append)
    assert len(seen) == 3 and all(s.shape == (1,) for s in seen)


@pytest.mark.parametrize("kw, match", [
    (dict(attention_mask=np.ones((3, 3))), "attention_mask must have the shape"),
    (dict(eos_token_id=N), r"eos_token_id must be a token id in \[0, 16\)"),
    (dict(pad_token_id=-1), "pad_token_id must be a token id"),
    (dict(num_return_sequences=2), "num_return_sequences must be 1 for greedy"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences must be <= num_beams"),
    (dict(num_beams=2, streamer=print), "streamer works with greedy"),
    (dict(max_new_tokens=0), "max_new_tokens must be"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0"),
    (dict(do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(early_stopping="sometimes", num_beams=2), "early_stopping must be"),
])
def test_bad_arguments(kw, match):
    args = dict(max_new_tokens=3)
    args.update(kw)
    ids = np.array([[0, 3, 4, 5], [0, 7, 8, 9], [0, 1, 2, 3]])
    with pytest.raises(ValueError, match=match):
        generate(_lm(), ids, **args)


def test_pad_needed_and_model_length():
    with pytest.raises(ValueError, match="pad_token_id"):
        generate(_lm(), [[0, 1], [2]], max_new_tokens=2)           # ragged, no pad, no eos
    with pytest.raises(ValueError, match="give input_ids"):
        generate(_lm(), max_new_tokens=2)
    short = _lm(max_length=6)
    with pytest.raises(ValueError, match=r"input_ids has prompts of 7 tokens.*max_length=6"):
        generate(short, [list(range(7))], max_new_tokens=1)
    with pytest.raises(ValueError, match="max_new_tokens=3 after prompts of 4 tokens"):
        generate(short, [[0, 1, 2, 3]], max_new_tokens=3)
    assert generate(short, [[0, 1, 2, 3]], max_new_tokens=2).sequences.shape == (1, 6)


def test_inputs_are_not_changed():
    p = prompts(RAGGED, pad=PAD)
    ids, mask = p.ids.copy(), p.mask.copy()
    generate(_lm(), ids, attention_mask=mask, max_new_tokens=3, num_beams=2, pad_token_id=PAD,
             repetition_penalty=1.2, no_repeat_ngram_size=2)
    assert (ids == p.ids).all() and (mask == p.mask).all()
