"""Score processors with Hugging Face's semantics (``transformers.generation.logits_process``).

Each takes a ``(rows, N)`` float array of scores and returns a new one (inputs are
never changed); excluded tokens become -inf.  ``generate`` applies them in
Hugging Face's order: repetition penalty, n-gram ban, min-new-tokens eos ban,
then, when sampling, temperature, top-k, top-p and min-p.
"""
from __future__ import annotations

import numpy as np

from fastdl.decode.ops import topk

__all__ = ["repetition_penalty", "ban_ngrams", "ban_tokens", "process", "warp", "softmax64"]


def softmax64(x: np.ndarray) -> np.ndarray:
    """Row softmax in float64 (rows with a finite maximum)."""
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def repetition_penalty(scores: np.ndarray, seqs: np.ndarray, counted: np.ndarray,
                       penalty: float) -> np.ndarray:
    """Every token that occurs in a row's counted positions: a negative score is
    multiplied by ``penalty``, a positive one divided (CTRL's penalty, as Hugging
    Face; left padding is not counted)."""
    rows = np.repeat(np.arange(seqs.shape[0]), seqs.shape[1]).reshape(seqs.shape)[counted]
    toks = seqs[counted]
    out = scores.copy()
    vals = scores[rows, toks]
    out[rows, toks] = np.where(vals < 0, vals * out.dtype.type(penalty),
                               vals / out.dtype.type(penalty))
    return out


def ngram_bans(seqs: np.ndarray, n: int) -> list[list[int]]:
    """Per row, the tokens that would complete an n-gram already in the row."""
    L = seqs.shape[1]
    if L + 1 < n:
        return [[] for _ in range(seqs.shape[0])]
    out = []
    for seq in seqs.tolist():
        tail = tuple(seq[L - n + 1:])
        out.append(sorted({seq[i + n - 1] for i in range(L - n + 1)
                           if tuple(seq[i:i + n - 1]) == tail}))
    return out


def ban_ngrams(scores: np.ndarray, seqs: np.ndarray, n: int) -> np.ndarray:
    """``no_repeat_ngram_size``: no n-gram occurs twice in a row."""
    out = scores.copy()
    for r, toks in enumerate(ngram_bans(seqs, n)):
        if toks:
            out[r, toks] = -np.inf
    return out


def ban_tokens(scores: np.ndarray, tokens) -> np.ndarray:
    """Tokens (e.g. eos before ``min_new_tokens``) set to -inf in every row."""
    out = scores.copy()
    out[:, list(tokens)] = -np.inf
    return out


def process(scores: np.ndarray, rows, *, penalty: float = 1.0, ngram: int = 0,
            ngram_padding: bool = True, ban=()) -> np.ndarray:
    """Hugging Face's processors in its order: ``repetition_penalty``, the n-gram
    ban, then ``ban`` (eos before ``min_new_tokens``).  ``rows()`` gives ``(seqs,
    counted)``: each row's tokens so far (prompt included) and which are not padding;
    it is called only when a processor needs them.  ``ngram_padding``: n-grams over
    the padded row (Hugging Face) or over the tokens alone."""
    if penalty != 1.0 or ngram:
        seqs, counted = rows()
        if penalty != 1.0:
            scores = repetition_penalty(scores, seqs, counted, penalty)
        if ngram and ngram_padding:
            scores = ban_ngrams(scores, seqs, ngram)
        elif ngram:
            scores = scores.copy()
            for r in range(len(seqs)):
                toks = ngram_bans(seqs[r:r + 1, counted[r]], ngram)[0]
                if toks:
                    scores[r, toks] = -np.inf
    if len(ban):
        scores = ban_tokens(scores, ban)
    return scores


def _temperature(x: np.ndarray, temperature: float) -> np.ndarray:
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        y = x / x.dtype.type(temperature)
        if not np.isfinite(y[np.isfinite(x)]).all():
            # a tiny temperature overflowed the dtype: shift by the row maximum first (the
            # distribution is the same), in float64; what still overflows is -inf
            y = (x - x.max(axis=1, keepdims=True)).astype(np.float64) / temperature
            y[np.isnan(y)] = 0.0                 # the row maximum itself: 0 / tiny
    return y


def warp(scores: np.ndarray, *, temperature: float = 1.0, top_k: int | None = None,
         top_p: float = 1.0, min_p: float | None = None, keep: int = 1,
         backend: str | None = None) -> np.ndarray:
    """Sampling filters in Hugging Face's order and semantics.

    ``temperature``: scores / T.  ``top_k``: drop scores below the k-th largest
    (ties with it stay).  ``top_p``: drop the least likely tokens whose total
    probability is at most 1 - p.  ``min_p``: drop tokens whose probability is
    below min_p × the most likely one's.  The best ``keep`` tokens always stay.
    Rows need a finite maximum.
    """
    x = scores
    N = x.shape[1]
    if temperature != 1.0:
        x = _temperature(x, temperature)
    if top_k:
        k = min(max(int(top_k), keep), N)
        kth = topk(x, k, backend=backend)[0][:, -1:]
        x = np.where(x < kth, -np.inf, x).astype(x.dtype)
    if top_p < 1.0:
        order = np.argsort(x, axis=1, kind="stable")            # ascending, as Hugging Face
        cum = np.cumsum(softmax64(np.take_along_axis(x, order, axis=1)), axis=1)
        drop = cum <= 1.0 - top_p
        drop[:, N - keep:] = False
        mask = np.zeros(x.shape, bool)
        np.put_along_axis(mask, order, drop, axis=1)
        x = np.where(mask, -np.inf, x).astype(x.dtype)
    if min_p is not None:
        p = softmax64(x)
        drop = p < min_p * p.max(axis=1, keepdims=True)
        if keep > 1:
            best = np.argsort(-p, axis=1, kind="stable")[:, :keep]
            np.put_along_axis(drop, best, False, axis=1)
        x = np.where(drop, -np.inf, x).astype(x.dtype)
    return x


def draw(probs_from: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row from softmax(scores), by inverting the row's CDF."""
    cdf = np.cumsum(softmax64(probs_from), axis=1)
    u = rng.random(cdf.shape[0]) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), cdf.shape[1] - 1).astype(np.int64)
