"""Shared by the tests/test_decode_lm_*.py modules: a random language model under both
protocols and the searches every protocol test runs.
"""

import zlib

import numpy as np


def _lsm(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class RandomLM:
    """Random log-probs (or logits) per full prefix; both protocols; logs what is called."""

    def __init__(self, N, seed=0, *, logits=False, declare=True):
        self.N, self.seed, self.logits, self.log = N, seed, logits, []
        if declare:
            self.vocab_size = N
        if logits:            # unnormalized logits, declared as such
            self.normalized = False

    def row(self, prefix):
        rng = np.random.default_rng(zlib.crc32(repr((self.seed, tuple(prefix))).encode()))
        x = rng.standard_normal(self.N) * 2 + (3.0 if self.logits else 0.0)
        return x if self.logits else _lsm(x)

    def __call__(self, prefixes):
        self.log.append(("call", prefixes.shape))
        return np.stack([self.row(p) for p in prefixes.tolist()])

    def initial_state(self, batch):
        self.log.append(("initial_state", batch))
        return [()] * batch

    def step(self, tokens, state):
        self.log.append(("step", tokens.tolist()))
        new = [s + (t,) for s, t in zip(state, tokens.tolist())]
        return np.stack([self.row(p) for p in new]), new

    def reorder(self, state, indices):
        self.log.append(("reorder", list(indices)))
        return [state[i] for i in indices]

    def kinds(self):
        return {k for k, _ in self.log}
