"""Shared by tests/test_generate_hf.py and tests/test_generate_processors.py: tiny random
GPT-2s built from configs (nothing is downloaded), the GPT-2 as a fastdl callable LM over
left-padded prompts, left padding, and Hugging Face ``generate`` called the same way.

Only imported by modules that have already skipped without torch/transformers.
"""
import numpy as np
import pytest
import torch
import transformers

V, BOS, PAD = 40, 0, 39
EOS_A, EOS_B = 1, 2
N_POSITIONS = 32

# different lengths, so batch 4 is left-padded; the third prompt holds an eos token,
# which must not end it (only generated eos tokens do)
PROMPTS = {
    1: [[7, 3, 12, 5]],
    4: [[7, 3, 12, 5, 9], [20, 4], [11, 30, EOS_A, 8, 25, 6, 17], [15, 9, 33]],
}


def gpt2(seed, eos_boost, *, eos=None, pad=None, bos=BOS):
    """A 2-layer GPT-2 over V tokens; ``eos_boost`` raises the logits of tokens 1 and 2.

    ``eos``/``pad`` go into the config (so into ``model.generation_config``): the grid
    passes its own, the default-argument tests rely on these.
    """
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=N_POSITIONS, n_embd=16, n_layer=2,
                                  n_head=2, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                                  initializer_range=0.3, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        # hidden unit 0 of the final layer norm is ~3 for every position; only the
        # eos rows of the head read it, so hypotheses end early and finished lists matter
        model.transformer.ln_f.bias[0] = 3.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[EOS_A, 0] = eos_boost
        model.lm_head.weight[EOS_B, 0] = 0.8 * eos_boost
    return model


def positions(mask):
    """The position ids Hugging Face ``generate`` derives from a left-padded mask
    (``_prepare_position_ids_for_generation``): 0 at the first real token, pads at 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


class FullPrefixLM:
    """A transformers causal LM as a fastdl callable LM: ``lm(prefixes,
    attention_mask=None)`` runs the model on the full (left-padded) prefixes with the
    mask and HF's position ids and returns the float32 logits of the next token,
    ``(rows, V)`` (``log_probs=True``: their log-softmax, a normalized model).

    Without a cache this is exactly what ``generate(..., use_cache=False)`` computes (for
    the same rows: a call on a subset of a padded batch may drop a mask HF keeps).
    ``calls`` records each call's (prefixes, mask) shapes.
    """

    def __init__(self, model, *, log_probs=False, **attrs):
        self.model = model
        self.normalized = log_probs
        cfg = model.config
        self.vocab_size = cfg.vocab_size
        self.max_length = getattr(cfg, "n_positions", None) or cfg.max_position_embeddings
        self.calls = []
        for k, v in attrs.items():      # eos_token_id / pad_token_id / bos_token_id
            setattr(self, k, v)

    def __call__(self, prefixes, attention_mask=None):
        prefixes = np.asarray(prefixes)
        assert prefixes.ndim == 2 and prefixes.dtype.kind in "iu", (prefixes.shape, prefixes.dtype)
        x = torch.from_numpy(prefixes.astype(np.int64))
        if attention_mask is None:
            m = torch.ones_like(x)
        else:
            attention_mask = np.asarray(attention_mask)
            assert attention_mask.shape == prefixes.shape, (attention_mask.shape, prefixes.shape)
            m = torch.from_numpy(attention_mask.astype(np.int64))
        self.calls.append((tuple(prefixes.shape), attention_mask is not None))
        pos = positions(m)
        # as HF generate calls the model: a mask of ones is dropped (attention takes its
        # causal path), the positions are kept, and the head runs on the last position
        # only (each changes the float32 rounding)
        with torch.no_grad():
            out = self.model(input_ids=x, attention_mask=None if bool((m == 1).all()) else m,
                             position_ids=pos, use_cache=False, logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        return (torch.log_softmax(logits, dim=-1) if self.normalized else logits).numpy()


def left_pad(prompts, pad=PAD):
    """Prompts of different lengths as HF pads decoder-only prompts: (ids, mask) int64."""
    P = max(len(p) for p in prompts)
    ids = np.full((len(prompts), P), pad, np.int64)
    mask = np.zeros((len(prompts), P), np.int64)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = p
        mask[i, P - len(p):] = 1
    return ids, mask


def hf_generate(model, ids, mask, *, use_cache=False, **kw):
    """``model.generate`` on the numpy prompt batch, dict output with the scores."""
    with torch.no_grad():
        return model.generate(input_ids=torch.from_numpy(ids),
                              attention_mask=torch.from_numpy(mask), use_cache=use_cache,
                              return_dict_in_generate=True, output_scores=True, **kw)


def grow(mask, t):
    """The mask of the prefixes after t generated tokens."""
    return np.concatenate([mask, np.ones((mask.shape[0], t), mask.dtype)], axis=1)


class Recorder(transformers.generation.BaseStreamer):
    """An HF streamer that keeps a copy of every ``put`` and counts ``end`` calls."""

    def __init__(self):
        self.puts, self.ends = [], 0

    def put(self, value):
        if torch.is_tensor(value):                  # HF puts torch tensors
            value = value.numpy()
        self.puts.append(np.array(value, dtype=np.int64))

    def end(self):
        self.ends += 1


def set_torch_threads():
    """Module-fixture body: these models are tiny, one torch thread is fastest (and far
    faster on a busy machine).  Yields, then restores the count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _wrappers():
    """The ways fastdl drives the GPT-2: the callable over padded prefixes, and the
    Hugging Face wrapper (a stateful LM over the model's own cache) where it exists."""
    yield pytest.param(FullPrefixLM, id="callable")
    try:
        from fastdl.decode.hf import CausalLM
    except ImportError:
        CausalLM = None
    yield pytest.param(CausalLM, id="CausalLM", marks=pytest.mark.skipif(
        CausalLM is None, reason="fastdl.decode.hf.CausalLM is not available"))


WRAPPERS = list(_wrappers())


def cached(wrap):
    """Whether HF should run over its cache to be compared with ``wrap``: the callable
    computes full prefixes, as HF without its cache; a cache-driving wrapper is compared
    with HF over its cache (the nearest float32 rounding)."""
    return wrap is not FullPrefixLM
