"""A deterministic random language model for tests of decoding code: both LM protocols
(batch of prefixes, and incremental step/reorder), with a log of what was called."""

import zlib

import numpy as np


def log_softmax_row(x):
    """float64 log-softmax of a 1-D row (max-shifted), independent of the decode kernels."""
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class RandomLM:
    """Random log-probs (or logits) over ``N`` tokens per full prefix, seeded by the prefix
    (the same prefix gives the same row under either protocol); ``log`` records each
    call, ``kinds()`` the protocol methods used."""

    def __init__(self, N, seed=0, *, logits=False, declare=True):
        self.N, self.seed, self.logits, self.log = N, seed, logits, []
        if declare:
            self.vocab_size = N
        if logits:            # unnormalized logits, declared as such
            self.normalized = False

    def row(self, prefix):
        rng = np.random.default_rng(zlib.crc32(repr((self.seed, tuple(prefix))).encode()))
        x = rng.standard_normal(self.N) * 2 + (3.0 if self.logits else 0.0)
        return x if self.logits else log_softmax_row(x)

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
