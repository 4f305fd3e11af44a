"""Models for the ``generate`` benchmarks, built from configs (nothing is downloaded).

* ``synthetic_hf(lm)``: ``examples.SyntheticLM``'s model as a transformers
  causal LM (the same rolling hash of each row's unpadded tokens, the same
  logits table), so Hugging Face ``generate`` runs the same model fastdl does;
* ``tiny_gpt2(vocab_size)``: a random 2-layer GPT-2.

``model_timer(model)`` times the model's forward passes, so the time
``generate`` spends outside the model is its total minus theirs.
"""
from __future__ import annotations

import time


def synthetic_hf(lm):
    import torch
    from torch import nn
    from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class SyntheticConfig(PretrainedConfig):
        model_type = "fastdl-synthetic"

        def __init__(self, vocab_size=50257, **kw):
            super().__init__(**kw)
            self.vocab_size = vocab_size

    class SyntheticModel(PreTrainedModel, GenerationMixin):
        config_class = SyntheticConfig

        def __init__(self, config, table):
            super().__init__(config)
            self.register_buffer("table", torch.from_numpy(table), persistent=False)
            self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # gives a device
            self.post_init()

        def _init_weights(self, module):
            pass

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            h = torch.zeros(input_ids.shape[0], dtype=torch.int64)
            for j in range(input_ids.shape[1]):
                nxt = (h * lm._MUL + input_ids[:, j] + 1) % lm._MOD
                h = torch.where(mask[:, j] != 0, nxt, h)
            logits = self.table[h % self.table.shape[0]][:, None, :]
            return CausalLMOutputWithPast(logits=logits)

    cfg = SyntheticConfig(vocab_size=lm.vocab_size, bos_token_id=0, pad_token_id=0,
                          eos_token_id=None)
    return SyntheticModel(cfg, lm.table).eval()


def tiny_gpt2(vocab_size: int = 50257, seed: int = 0):
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2,
                                  n_head=2, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


class model_timer:
    """Context: the wall time and count of ``model``'s forward passes inside it."""

    def __init__(self, model):
        self.model, self.seconds, self.calls = model, 0.0, 0

    def __enter__(self):
        self._t0 = 0.0

        def pre(*_a, **_k):
            self._t0 = time.perf_counter()

        def post(*_a, **_k):
            self.seconds += time.perf_counter() - self._t0
            self.calls += 1

        self._hooks = [self.model.register_forward_pre_hook(pre, with_kwargs=True),
                       self.model.register_forward_hook(post, with_kwargs=True)]
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        return False
