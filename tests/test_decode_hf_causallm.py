"""fastdl.decode.hf.CausalLM against the installed transformers on tiny random models.

The models are built from configs with seeded random weights (nothing is downloaded):
a GPT-2 (learned positions), a Llama (rotary positions, grouped key/value heads) and a
Mistral with a 4-token sliding window (a cache that drops old keys).  The wrapper must
feed the model what ``generate`` feeds it, so its scores equal ``generate``'s logits
bit for bit, and a full forward pass on the whole sequence to float32 rounding.
"""
import numpy as np
import pytest

from fastdl.decode import Logits, beam_search, exact_search, greedy, sample

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from fastdl.decode.hf import CausalLM, CausalLMState  # noqa: E402

from _generate_hf_helpers import FullPrefixLM, left_pad, set_torch_threads  # noqa: E402

V, BOS, EOS, PAD, POS = 50, 0, 1, 49, 32
TOL = dict(rtol=1e-5, atol=1e-5)


def _gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=POS, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                                  initializer_range=0.3, **kw)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        # eos gets a larger logit everywhere: greedy ends after a few tokens
        model.transformer.ln_f.bias[0] = 3.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[EOS, 0] = 0.45
    return model


def _llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=POS,
                                   bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                                   initializer_range=0.3)
    return transformers.LlamaForCausalLM(cfg).eval()


def _mistral(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.MistralConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=1, max_position_embeddings=POS,
                                     sliding_window=4, bos_token_id=BOS, eos_token_id=EOS,
                                     pad_token_id=PAD, initializer_range=0.3)
    return transformers.MistralForCausalLM(cfg).eval()


BUILDERS = {"gpt2": _gpt2, "llama": _llama, "mistral": _mistral}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    yield from set_torch_threads()


@pytest.fixture(scope="module")
def models():
    return {name: build() for name, build in BUILDERS.items()}


# three prompts of lengths 5, 2 and 7, left-padded to 7
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12, 13, 14, 15, 16]]


def _padded(prompts):
    return left_pad(prompts, pad=PAD)


def _full_forward(model, ids, mask):
    """Every position's float32 logits from one pass over the whole left-padded sequence,
    with the position ids generate derives from the mask."""
    x, m = torch.tensor(ids), torch.tensor(mask)
    pos = (m.cumsum(-1) - 1).masked_fill(m == 0, 0)
    with torch.no_grad():
        return model(input_ids=x, attention_mask=m, position_ids=pos,
                     use_cache=False).logits.float().numpy()


def _random_tokens(seed, rows, steps):
    return np.random.default_rng(seed).integers(2, V - 1, size=(steps, rows))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_prefill_and_steps_equal_a_full_forward(models, name):
    model, lm = models[name], CausalLM(models[name])
    ids, mask = _padded(PROMPTS)
    toks = _random_tokens(0, len(PROMPTS), 5)
    scores, state = lm.prefill(ids, mask)
    got = [scores]
    for t in toks:
        scores, state = lm.step(t, state)
        got.append(scores)
    full_ids = np.concatenate([ids, toks.T], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(toks.T)], axis=1)
    want = _full_forward(model, full_ids, full_mask)
    P = ids.shape[1]
    for k, g in enumerate(got):
        assert g.dtype == np.float32 and g.shape == (len(PROMPTS), V)
        np.testing.assert_allclose(g, want[:, P - 1 + k], **TOL)


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("prompts", [PROMPTS, [[5, 6, 7], [8, 9, 10]], [[BOS]]],
                         ids=["left-padded", "no-padding", "bos"])
def test_scores_are_generates_logits_bit_for_bit(models, name, prompts):
    # generate feeds its own tokens back; CausalLM fed the same tokens gives the same logits
    model, lm = models[name], CausalLM(models[name])
    ids, mask = _padded(prompts)
    T = 6
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                             max_new_tokens=T, min_new_tokens=T, do_sample=False,
                             eos_token_id=None, pad_token_id=PAD, output_logits=True,
                             return_dict_in_generate=True)
    new = out.sequences[:, ids.shape[1]:].numpy()
    if prompts == [[BOS]]:       # from the empty state, the first step is the prefill
        scores, state = lm.step(ids[:, 0], lm.initial_state(1))
    else:
        scores, state = lm.prefill(ids, mask)
    for k in range(T):
        np.testing.assert_array_equal(scores, out.logits[k].numpy())
        scores, state = lm.step(new[:, k], state)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_reorder_repeats_and_drops_rows(models, name):
    model, lm = models[name], CausalLM(models[name])
    ids, mask = _padded(PROMPTS)
    toks = _random_tokens(1, len(PROMPTS), 6)
    _, state = lm.prefill(ids, mask)
    for t in toks[:3]:
        _, state = lm.step(t, state)
    pick = np.array([2, 2, 0])                      # row 1 dropped, row 2 twice
    state = lm.reorder(state, pick)
    hist_ids = np.concatenate([ids, toks[:3].T], axis=1)[pick]
    hist_mask = np.concatenate([mask, np.ones((3, 3), np.int64)], axis=1)[pick]
    nxt = toks[3:].T[:, :3].copy()
    nxt[1] = [20, 21, 22]                           # the two copies of row 2 diverge
    got = []
    for k in range(3):
        scores, state = lm.step(nxt[:, k], state)
        got.append(scores)
    want = _full_forward(model, np.concatenate([hist_ids, nxt], axis=1),
                         np.concatenate([hist_mask, np.ones((3, 3), np.int64)], axis=1))
    W = hist_ids.shape[1]
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, want[:, W + k], **TOL)
    assert not np.allclose(got[-1][0], got[-1][1])   # the copies really are separate rows


def _snapshot(state):
    layers = [(layer.keys, layer.values, layer.keys.clone(), layer.values.clone())
              for layer in state.cache.layers]
    return (state.cache, list(state.cache.layers), layers, state.mask, state.mask.clone(),
            state.next_pos.clone(), state.length)


def _unchanged(state, snap):
    cache, layer_objs, layers, mask, mask_copy, pos, length = snap
    assert state.cache is cache and list(state.cache.layers) == layer_objs
    for layer, (k, v, k0, v0) in zip(state.cache.layers, layers):
        assert layer.keys is k and layer.values is v
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert state.mask is mask and torch.equal(mask, mask_copy)
    assert torch.equal(state.next_pos, pos) and state.length == length


@pytest.mark.parametrize("name", ["gpt2", "mistral"])
def test_reorder_and_step_leave_their_state_as_it_was(models, name):
    lm = CausalLM(models[name])
    ids, mask = _padded(PROMPTS)
    _, state = lm.prefill(ids, mask)
    first, _ = lm.step(np.array([7, 8, 9]), state)
    snap = _snapshot(state)
    branch = lm.reorder(state, np.array([0]))       # exact_search's branch
    _unchanged(state, snap)
    lm.step(np.array([3]), branch)
    lm.step(np.array([4, 5, 6]), lm.reorder(state, np.array([2, 1, 0])))
    lm.step(np.array([4, 5, 6]), state)
    _unchanged(state, snap)
    again, _ = lm.step(np.array([7, 8, 9]), state)
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("search", ["greedy", "beam", "exact", "sample"])
def test_searches_equal_the_same_search_on_full_prefixes(models, name, search):
    model = models[name]
    run = {"greedy": lambda lm: greedy(lm, 8, bos=BOS, eos=EOS),
           "beam": lambda lm: beam_search(lm, 3, 6, bos=BOS, eos=EOS, length_penalty=1.0,
                                          early_stopping=False),
           # without eos: the optimum is a long sequence, found after ~60 expansions
           "exact": lambda lm: exact_search(lm, 3, bos=BOS),
           # rows drawn together, each with its own cache row
           "sample": lambda lm: sample(lm, 6, bos=BOS, eos=EOS, top_k=20, top_p=0.9, seed=3,
                                       num_samples=5)}[search]
    got, want = run(CausalLM(model)), run(FullPrefixLM(model))
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.log_prob for h in got] == pytest.approx([h.log_prob for h in want], abs=2e-5)
    assert got[0].stats.lm_calls >= 4


@pytest.mark.parametrize("name", list(BUILDERS))
def test_greedy_equals_generate(models, name):
    model = models[name]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([[BOS]]), max_new_tokens=10,
                             do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    (h,) = greedy(CausalLM(model), 10, bos=BOS, eos=EOS)
    toks = out[0, 1:].tolist()
    assert h.tokens == tuple(toks[:toks.index(EOS) + 1] if EOS in toks else toks)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_beam_search_equals_generate_with_its_cache(models, name):
    model = models[name]
    B, T = 3, 6
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([[BOS]]), max_new_tokens=T, num_beams=B,
                             num_return_sequences=B, do_sample=False, eos_token_id=EOS,
                             pad_token_id=PAD, early_stopping=False, length_penalty=1.0,
                             output_scores=True, return_dict_in_generate=True)
    got = beam_search(CausalLM(model), B, T, bos=BOS, eos=EOS, length_penalty=1.0,
                      early_stopping=False)
    want = []
    for row in out.sequences[:, 1:].tolist():
        want.append(tuple(row[:row.index(EOS) + 1] if EOS in row else row))
    assert [h.tokens for h in got] == want
    assert [h.score for h in got] == pytest.approx(out.sequences_scores.tolist(), abs=2e-5)


def test_attributes(models):
    lm = CausalLM(models["gpt2"])
    assert lm.normalized is False and lm.vocab_size == V and lm.max_length == POS
    assert (lm.bos_token_id, lm.eos_token_id, lm.pad_token_id) == (BOS, EOS, PAD)
    assert lm.model is models["gpt2"]
    assert CausalLM(models["llama"]).max_length == POS
    # the scores the searches check: logits, so Logits' log-softmax path is not needed
    assert not isinstance(lm, Logits)


def test_eos_list_is_kept_as_given():
    model = _gpt2()
    model.generation_config.eos_token_id = [EOS, 2]
    model.generation_config.pad_token_id = None
    lm = CausalLM(model)
    assert lm.eos_token_id == [EOS, 2] and lm.pad_token_id is None


def test_training_model_runs_in_eval_mode_and_keeps_its_modes(models):
    model = _gpt2(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    ids, mask = _padded(PROMPTS)
    want, _ = CausalLM(model).prefill(ids, mask)
    model.train()
    model.transformer.h[1].eval()                   # a mixed state is put back as it was
    modes = [m.training for m in model.modules()]
    threads = torch.get_num_threads()
    got, state = CausalLM(model).prefill(ids, mask)
    np.testing.assert_array_equal(got, want)        # no dropout
    assert [m.training for m in model.modules()] == modes
    assert torch.get_num_threads() == threads


def test_not_a_causal_lm_is_a_type_error():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=POS, n_embd=16, n_layer=1, n_head=2)
    with pytest.raises(TypeError, match="model .*GPT2Model.* no language-model head"):
        CausalLM(transformers.GPT2Model(cfg))
    with pytest.raises(TypeError, match="model must be a transformers causal language model"):
        CausalLM(lambda ids: ids)
    with pytest.raises(TypeError, match="model must be"):
        CausalLM(torch.nn.Linear(2, 2))


def test_prompt_longer_than_the_model_allows(models):
    lm = CausalLM(models["gpt2"])
    ids = np.full((2, POS + 1), 5, np.int64)
    with pytest.raises(ValueError, match=rf"input_ids.* {POS + 1} tokens.*maximum of {POS}"):
        lm.prefill(ids, np.ones_like(ids))
    # the last position is usable, the one after it is not
    _, state = lm.prefill(ids[:, :POS - 1], np.ones_like(ids[:, :POS - 1]))
    _, state = lm.step(np.array([3, 4]), state)
    with pytest.raises(ValueError, match=rf"step.* {POS + 1} tokens.*maximum of {POS}"):
        lm.step(np.array([3, 4]), state)
    state = lm.initial_state(1)
    for _ in range(POS):
        _, state = lm.step(np.array([3]), state)
    with pytest.raises(ValueError, match="max_length"):
        lm.step(np.array([3]), state)


def test_bad_arguments(models):
    lm = CausalLM(models["gpt2"])
    ids, mask = _padded(PROMPTS)
    with pytest.raises(ValueError, match=r"input_ids must hold token ids in \[0, 50\).*got 50"):
        lm.prefill(np.array([[3, V]]), None)
    with pytest.raises(TypeError, match="input_ids must be an integer array"):
        lm.prefill(ids.astype(np.float32), mask)
    with pytest.raises(ValueError, match="input_ids must have shape"):
        lm.prefill(ids[0], mask[0])
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        lm.prefill(ids, mask[:, 1:])
    with pytest.raises(ValueError, match="attention_mask must hold only 0"):
        lm.prefill(ids, mask * 2)
    with pytest.raises(ValueError, match=r"attention_mask must pad on the left only.*row 0 is "
                                         r"\[1, 1, 1, 1, 1, 0, 0\]"):
        lm.prefill(ids, mask[:, ::-1].copy())
    holed = mask.copy()
    holed[2, 3] = 0
    with pytest.raises(ValueError, match=r"pad on the left only.*row 2 is \[1, 1, 1, 0, 1, 1, 1\]"):
        lm.prefill(ids, holed)
    with pytest.raises(ValueError, match="at least one token"):
        lm.prefill(ids, np.zeros_like(mask))
    _, state = lm.prefill(ids, mask)
    with pytest.raises(ValueError, match=r"tokens must have one token per row of the state \(3\)"):
        lm.step(np.array([1, 2]), state)
    with pytest.raises(ValueError, match=r"indices must be rows of the state, in \[0, 3\), got 3"):
        lm.reorder(state, np.array([0, 3]))
    with pytest.raises(ValueError, match="indices must select at least one row"):
        lm.reorder(state, np.array([], np.int64))
    with pytest.raises(TypeError, match="state must come from this model"):
        lm.step(np.array([1, 2, 3]), None)
    with pytest.raises(ValueError, match="state belongs to another model"):
        CausalLM(models["llama"]).step(np.array([1, 2, 3]), state)
    # a second wrapper of the same model may continue the state
    CausalLM(models["gpt2"]).step(np.array([1, 2, 3]), state)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        lm.initial_state(0)
    np.testing.assert_array_equal(mask, _padded(PROMPTS)[1])   # inputs untouched
    assert isinstance(state, CausalLMState) and state.rows == 3
