"""Hugging Face causal language models as fastdl stateful models.

``CausalLM(model)`` wraps a ``transformers`` causal LM (``AutoModelForCausalLM``,
``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...) so that every fastdl search
(greedy, beam_search, sample, exact_search, generate) runs on it, with a
key/value cache that follows the beams::

    >>> from fastdl.decode import beam_search
    >>> from fastdl.decode.hf import CausalLM
    >>> lm = CausalLM(model)                                   # doctest: +SKIP
    >>> beam_search(lm, 4, 20, bos=lm.bos_token_id)            # doctest: +SKIP

The model is fed exactly what ``model.generate`` feeds it: left-padded prompts
with their attention mask, position ids counted from each row's first real
token, the mask grown by one column per step, a fresh ``DynamicCache``, and the
logits of the last position cast to float32.  So the scores equal
``generate``'s bit for bit when the model runs the same batch of rows (another
batch size may round differently in the model's matrix products).  ``max_length``
bounds the padded length, as ``generate``'s ``max_length`` does.

torch and transformers are imported on first use: ``pip install 'fastdl[peers]'``
(or torch and transformers) to use this module.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import numbers

import numpy as np

from fastdl._validate import check_int, plain_array

__all__ = ["CausalLM", "CausalLMState"]

_INSTALL = ("fastdl.decode.hf.CausalLM needs torch and transformers; install them with "
            "pip install 'fastdl[peers]' (or pip install torch transformers)")


def _peers():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(f"{_INSTALL} ({exc})") from None
    return torch, transformers


def _supported_layers(transformers) -> tuple:
    """Cache layers whose updates and selections build new tensors (never write into
    the old ones), so that a state can be shared: full and sliding-window attention,
    and the empty stand-in of layers that keep no cache.  Recurrent (linear-attention)
    layers update their buffers in place and are refused."""
    cu = transformers.cache_utils
    names = ("DynamicLayer", "DynamicSlidingWindowLayer", "DummyLayer")
    return tuple(getattr(cu, n) for n in names if hasattr(cu, n))


@contextlib.contextmanager
def _eval_mode(model):
    """Eval mode (no dropout) for one forward pass of a model in training mode; the
    modules that were training are put back, so the caller's model keeps its modes.
    A model in eval mode (``model.training`` False) is run as it is: walking every
    module at each step would cost as much as a tiny model's forward pass."""
    training = [m for m in model.modules() if m.training] if model.training else ()
    if training:
        model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


class CausalLMState:
    """The decoding state of some rows: their key/value cache, attention mask (None
    while it has no padding, as ``generate`` drops an all-ones mask), next position
    ids and length (padding included).  Opaque: ``step`` and ``reorder`` return new
    states and never change the ones they are given."""

    __slots__ = ("model", "cache", "mask", "next_pos", "length")

    def __init__(self, model, cache, mask, next_pos, length: int):
        self.model, self.cache, self.mask = model, cache, mask
        self.next_pos, self.length = next_pos, length

    @property
    def rows(self) -> int:
        return int(self.next_pos.shape[0])

    def __repr__(self):
        return f"CausalLMState(rows={self.rows}, length={self.length})"


def _int_array(x, name: str, ndim: int) -> np.ndarray:
    arr = plain_array(x, name)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int64 token ids), got dtype {arr.dtype}")
    if arr.ndim != ndim:
        want = "(rows,)" if ndim == 1 else "(rows, length)"
        raise ValueError(f"{name} must have shape {want}, got shape {arr.shape}")
    return arr


class CausalLM:
    """A ``transformers`` causal language model as a fastdl stateful model.

    ``prefill(input_ids, attention_mask)``: left-padded prompts ``(rows, P)`` (mask
    0 = padding, on the left only) -> ``(scores (rows, N) float32, state)``, the
    scores of the token after each prompt.  ``initial_state(batch)``: the state
    before any token (``step`` then gets each row's first token, e.g. ⟨BOS⟩).
    ``step(tokens, state)``: one token per row -> ``(scores, state)``.
    ``reorder(state, indices)``: the state of rows ``indices`` (may repeat, drop or
    permute rows; selects cache rows, leaves ``state`` as it was).

    Scores are the model's float32 logits (``normalized = False``: the searches apply
    log-softmax, as ``generate`` does).  Attributes: ``vocab_size`` (the logits'
    width), ``eos_token_id`` (an id, a list of ids or None), ``pad_token_id``,
    ``bos_token_id`` (from ``model.generation_config``), ``max_length`` (the model's
    positions, or None when its config does not say), ``model``.  Forward passes run
    under ``torch.no_grad()`` in eval mode: a model in training mode
    (``model.training``) is switched to eval for each pass and put back after.  The
    model's device is used for every tensor; scores come back to the CPU.  Models
    whose cache is recurrent (linear-attention / state-space layers) are not supported.
    """

    normalized = False

    def __init__(self, model):
        torch, transformers = _peers()
        self._torch = torch
        if not isinstance(model, torch.nn.Module) or getattr(model, "config", None) is None:
            raise TypeError("model must be a transformers causal language model (a torch "
                            "module with a config, e.g. "
                            "AutoModelForCausalLM.from_pretrained(...)), "
                            f"got {type(model).__name__}")
        config = model.config
        if getattr(config, "is_encoder_decoder", False):
            raise TypeError(f"model must be a decoder-only causal language model, got the "
                            f"encoder-decoder {type(model).__name__}")
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if head is None:
            raise TypeError(f"model ({type(model).__name__}) has no language-model head "
                            "(get_output_embeddings() is None): wrap the ...ForCausalLM / "
                            "...LMHeadModel class, not the base model")
        params = inspect.signature(model.forward).parameters
        self._cache_kw = next((k for k in ("cache", "past_key_values") if k in params), None)
        if self._cache_kw is None or "attention_mask" not in params:
            raise TypeError(f"model ({type(model).__name__}).forward takes no key/value cache "
                            "and attention mask; CausalLM needs a causal LM that does")
        # generate passes position ids and logits_to_keep=1 when the forward takes them
        self._pass_pos = "position_ids" in params
        self._keep_one = "logits_to_keep" in params
        get_text = getattr(config, "get_text_config", None)
        self._text_config = get_text(decoder=True) if callable(get_text) else config
        self._check_cache(transformers, model)
        self.model = model
        n = getattr(head, "out_features", None)
        if n is None and getattr(head, "weight", None) is not None:
            n = head.weight.shape[0]
        self.vocab_size = int(n if n is not None else self._text_config.vocab_size)
        self.max_length = None
        for key in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(self._text_config, key, None)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0:
                self.max_length = int(value)
                break
        gen = getattr(model, "generation_config", None) or config
        self.eos_token_id = getattr(gen, "eos_token_id", None)
        self.pad_token_id = getattr(gen, "pad_token_id", None)
        self.bos_token_id = getattr(gen, "bos_token_id", None)

    def __repr__(self):
        return (f"CausalLM({type(self.model).__name__}, vocab_size={self.vocab_size}, "
                f"max_length={self.max_length})")

    # ------------------------------------------------------------ the cache

    def _new_cache(self):
        from transformers import DynamicCache
        # generate's default: one layer per the config's layer types (sliding windows)
        return DynamicCache(config=self._text_config)

    def _check_cache(self, transformers, model):
        supports = getattr(model, "_supports_default_dynamic_cache", None)
        if callable(supports) and not supports():
            raise TypeError(f"model ({type(model).__name__}) does not use transformers' "
                            "DynamicCache; CausalLM supports attention models with a "
                            "key/value cache")
        probe = self._new_cache()
        if not hasattr(probe, "layers"):
            raise ImportError(f"{_INSTALL}: this transformers version's DynamicCache has no "
                              "layers; CausalLM needs transformers 5 or newer")
        ok = _supported_layers(transformers)
        for layer in probe.layers:
            if type(layer) not in ok:
                raise TypeError(f"model ({type(model).__name__}) has cache layers of type "
                                f"{type(layer).__name__}; CausalLM supports full and "
                                "sliding-window attention caches, not recurrent ones")

    @staticmethod
    def _clone(cache):
        """A new cache object sharing the tensors: the forward pass then assigns the
        grown key/value tensors to the clone's layers, not to the caller's."""
        out = copy.copy(cache)
        out.layers = [copy.copy(layer) for layer in cache.layers]
        return out

    # ------------------------------------------------------------ forward

    def _forward(self, ids, pos, mask, cache):
        torch = self._torch
        kw = {"input_ids": ids, self._cache_kw: cache, "use_cache": True, "return_dict": True}
        if mask is not None:
            kw["attention_mask"] = mask
        if self._pass_pos:
            kw["position_ids"] = pos
        if self._keep_one:
            kw["logits_to_keep"] = 1
        with torch.no_grad(), _eval_mode(self.model):
            out = self.model(**kw)
        scores = out.logits[:, -1, :].to(dtype=torch.float32, device="cpu").contiguous().numpy()
        new_cache = out.get("cache", None)
        if new_cache is None:
            new_cache = out.get("past_key_values", None)
        if new_cache is None:
            raise TypeError(f"model ({type(self.model).__name__}) returned no cache with "
                            "use_cache=True; CausalLM needs a model that caches")
        return scores, new_cache

    def _device(self):
        return getattr(self.model, "device", None) or next(self.model.parameters()).device

    def _tensor(self, arr: np.ndarray):
        # a copy: the caller's array is never shared with (or changed by) torch
        return self._torch.tensor(np.asarray(arr, np.int64), device=self._device())

    def _check_ids(self, arr: np.ndarray, name: str) -> None:
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
            raise ValueError(f"{name} must hold token ids in [0, {self.vocab_size}) (the "
                             f"model's vocabulary), got {bad}")

    def _check_length(self, length: int, name: str, what: str) -> None:
        if self.max_length is not None and length > self.max_length:
            raise ValueError(f"{name}: {what} {length} tokens (padding included), over the "
                             f"model's maximum of {self.max_length} positions (max_length)")

    def _check_state(self, state) -> CausalLMState:
        if not isinstance(state, CausalLMState):
            raise TypeError("state must come from this model's prefill, initial_state, step or "
                            f"reorder (a CausalLMState), got {type(state).__name__}")
        if state.model is not self.model:
            raise ValueError(f"state belongs to another model ({type(state.model).__name__} at "
                             f"{id(state.model):#x}), not to this CausalLM's")
        return state

    # ------------------------------------------------------------ the protocol

    def initial_state(self, batch) -> CausalLMState:
        """The state of ``batch`` empty rows: the first ``step`` is the prefill of one
        token per row, as ``generate`` on a one-token prompt."""
        batch = check_int(batch, "batch", minimum=1)
        pos = self._torch.zeros((batch, 1), dtype=self._torch.long, device=self._device())
        return CausalLMState(self.model, None, None, pos, 0)

    def prefill(self, input_ids, attention_mask=None):
        """Run the prompts: ``input_ids`` int ``(rows, P)``, left-padded;
        ``attention_mask`` 0/1 ``(rows, P)`` (None: no padding).  Returns the
        float32 scores ``(rows, N)`` of the next token and the state."""
        ids = _int_array(input_ids, "input_ids", 2)
        rows, P = ids.shape
        if rows < 1 or P < 1:
            raise ValueError(f"input_ids must have at least one row and one token, got shape "
                             f"{ids.shape}")
        self._check_ids(ids, "input_ids")
        self._check_length(P, "input_ids", "the prompts have")
        if attention_mask is None:
            mask = np.ones_like(ids, dtype=np.int64)
        else:
            mask = plain_array(attention_mask, "attention_mask")
            if mask.dtype.kind not in "biu":
                raise TypeError(f"attention_mask must hold integers 0/1, got dtype {mask.dtype}")
            if mask.shape != ids.shape:
                raise ValueError(f"attention_mask must have the shape of input_ids {ids.shape}, "
                                 f"got {mask.shape}")
            if ((mask != 0) & (mask != 1)).any():
                raise ValueError("attention_mask must hold only 0 (padding) and 1, got "
                                 f"{sorted(set(np.unique(mask).tolist()) - {0, 1})[:3]}")
            mask = mask.astype(np.int64)
            # left padding: each row is zeros then ones, ending in a real token
            bad = np.flatnonzero((np.diff(mask, axis=1) < 0).any(axis=1) | (mask[:, -1] == 0))
            if bad.size:
                raise ValueError(f"attention_mask must pad on the left only and leave every "
                                 f"row at least one token (0s then 1s); row {int(bad[0])} is "
                                 f"{mask[bad[0]].tolist()}")
        ids_t, mask_t = self._tensor(ids), self._tensor(mask)
        # generate: position ids count each row's real tokens from 0; padding gets 0,
        # which no real token attends to, so its value cannot change a score
        pos = (mask_t.cumsum(-1) - 1).masked_fill(mask_t == 0, 0)
        # generate drops a mask without padding (and keeps it dropped while decoding)
        mask_arg = None if bool(mask.all()) else mask_t
        scores, cache = self._forward(ids_t, pos, mask_arg, self._new_cache())
        return scores, CausalLMState(self.model, cache, mask_arg, pos[:, -1:] + 1, P)

    def step(self, tokens, state):
        """Feed one token per row: ``tokens`` int ``(rows,)``.  Returns the float32
        scores ``(rows, N)`` of the next token and the new state (``state`` is left
        as it was)."""
        state = self._check_state(state)
        toks = _int_array(tokens, "tokens", 1)
        if toks.shape[0] != state.rows:
            raise ValueError(f"tokens must have one token per row of the state ({state.rows}), "
                             f"got shape {toks.shape}")
        self._check_ids(toks, "tokens")
        self._check_length(state.length + 1, "step", "this step would make sequences of")
        torch = self._torch
        mask = state.mask
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((state.rows, 1))], dim=-1)
        cache = self._new_cache() if state.cache is None else self._clone(state.cache)
        scores, cache = self._forward(self._tensor(toks)[:, None], state.next_pos, mask, cache)
        return scores, CausalLMState(self.model, cache, mask, state.next_pos + 1,
                                     state.length + 1)

    def reorder(self, state, indices):
        """The state of rows ``indices`` of ``state`` (int, 1-D, non-empty; repeats,
        drops and permutations allowed).  New tensors: ``state`` is unchanged."""
        state = self._check_state(state)
        idx = _int_array(indices, "indices", 1)
        if idx.size == 0:
            raise ValueError("indices must select at least one row, got an empty array")
        if idx.min() < 0 or idx.max() >= state.rows:
            bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
            raise ValueError(f"indices must be rows of the state, in [0, {state.rows}), got {bad}")
        t = self._tensor(idx)
        cache = state.cache
        if cache is not None:
            cache = self._clone(cache)
            for layer in cache.layers:
                keys = getattr(layer, "keys", None)
                if keys is not None and keys.numel() > 0:
                    layer.keys = keys.index_select(0, t)
                    layer.values = layer.values.index_select(0, t)
        mask = None if state.mask is None else state.mask.index_select(0, t)
        return CausalLMState(self.model, cache, mask, state.next_pos.index_select(0, t),
                             state.length)
