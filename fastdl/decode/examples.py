"""Example language models: a small tree of shape phrases and a synthetic LM for benchmarks."""
from __future__ import annotations

import numpy as np

from fastdl.decode.lm import TreeLM

__all__ = ["shapes_lm", "SyntheticLM"]


def shapes_lm() -> TreeLM:
    """A tree over "the/a", colours and shapes where greedy and beam search disagree.

    Greedy finds "the red rectangle" (-9.7); beam search with width 2 finds "a
    blue square" (-9.9) and "a red circle" (-10.0), both worse than greedy's.
    """
    return TreeLM({
        "the": (-1.7, {"green": -3.6, "red": (-3.3, {"rectangle": -4.7})}),
        "a": (-2.0, {"blue": (-2.7, {"ellipse": -5.6, "square": -5.2}),
                     "red": (-2.9, {"circle": -5.1, "square": -5.3})}),
    })


class SyntheticLM:
    """A cheap deterministic LM over ``vocab_size`` tokens for benchmarks.

    The logits of a prefix are row ``h % table_rows`` of a fixed random table,
    ``h`` a rolling hash of the whole prefix, so every prefix has its own
    (repeating) distribution and the LM call costs one row gather.  Returns
    logits (``normalized = False``): the search normalizes them.  Both
    protocols (with ``prefill`` and ``attention_mask`` for left-padded prompts); the state
    is each row's hash.
    """

    normalized = False
    _MUL = 1_000_003
    _MOD = (1 << 31) - 1

    def __init__(self, vocab_size: int = 50257, *, table_rows: int = 64, seed: int = 0,
                 dtype=np.float32, scale: float = 3.0):
        rng = np.random.default_rng(seed)
        self.vocab_size = int(vocab_size)
        self.table = (rng.standard_normal((table_rows, self.vocab_size)) * scale).astype(dtype)
        self.bos = 0

    def _rows(self, h):
        return np.take(self.table, h % len(self.table), axis=0)

    def _next(self, h, tokens):
        return (h * self._MUL + tokens + 1) % self._MOD

    def initial_state(self, batch: int):
        return np.zeros(batch, np.int64)

    def step(self, tokens, state):
        h = self._next(state, np.asarray(tokens, np.int64))
        return self._rows(h), h

    def reorder(self, state, indices):
        return state[np.asarray(indices, np.int64)]

    def prefill(self, input_ids, attention_mask):
        h = self._hash(input_ids, attention_mask)
        return self._rows(h), h

    def __call__(self, prefixes, attention_mask=None):
        return self._rows(self._hash(prefixes, attention_mask))

    def _hash(self, prefixes, mask):
        """The rolling hash of each row's tokens, padding (mask 0) skipped."""
        prefixes = np.asarray(prefixes, np.int64)
        h = np.zeros(len(prefixes), np.int64)
        for j in range(prefixes.shape[1]):
            nxt = self._next(h, prefixes[:, j])
            h = nxt if mask is None else np.where(np.asarray(mask)[:, j] != 0, nxt, h)
        return h
