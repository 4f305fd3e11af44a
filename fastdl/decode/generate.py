"""``generate``: Hugging Face's ``model.generate``, its names, defaults and semantics, on any
fastdl LM."""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass

import numpy as np

from fastdl._validate import check_flag, check_int, check_real
from fastdl.decode import processors as P
from fastdl.decode._model import Model, eos_ids, token_id
from fastdl.decode.beams import BeamConfig, group_topk, run_beams
from fastdl.decode.ops import log_softmax
from fastdl.decode.prompts import Prompts, prompts as _prompts
from fastdl.decode.search import SearchStats, _check_beam_args, _common, _load_backends

__all__ = ["generate", "GenerateOutput"]

_NO_SCORE = -1.0e9          # Hugging Face's score of a beam slot that never finished


@dataclass
class GenerateOutput:
    """What ``generate`` returns (Hugging Face's ``GenerateBeamDecoderOnlyOutput`` fields).

    ``sequences``: int64 ``(batch * num_return_sequences, P + L)``, the prompts
    as given (left padding included), then the new tokens, ``pad_token_id``
    after eos; L is the longest new part.  ``sequences_scores``: beam search:
    the sum of the processed log-probabilities / L_i ** length_penalty (as
    Hugging Face); greedy and sampling (where Hugging Face gives none): the sum
    of the log-softmax of the scores each token was chosen from.  ``scores``
    (``output_scores=True``): per step, the processed scores, ``(batch, N)``
    (greedy, sampling: logits after the processors and warpers) or ``(batch *
    num_beams, N)`` (beam search: log-probabilities after the processors); rows
    of prompts that already finished are -inf.  ``beam_indices``: beam search,
    per new token the beam (``prompt * num_beams + beam``) it extended, -1
    after the end.  ``stats``: the ``SearchStats`` of the batch.
    """

    sequences: np.ndarray
    sequences_scores: np.ndarray
    scores: tuple | None
    beam_indices: np.ndarray | None
    stats: SearchStats


def _attr(lm, name):
    return getattr(lm, name, None)


def _count_arg(value, name, minimum=0):
    return check_int(value, name, minimum=minimum)


class _Streamer:
    """Hugging Face's streamer protocol (``put``/``end``) or a plain callable."""

    def __init__(self, streamer):
        self.s = streamer
        self.hf = callable(getattr(streamer, "put", None))
        if not self.hf and not callable(streamer):
            raise TypeError("streamer must have put(ids) and end() methods (Hugging Face's "
                            f"streamers) or be callable, got {type(streamer).__name__}")

    def prompt(self, ids):
        if self.hf:
            self.s.put(ids.copy())

    def put(self, tokens):
        (self.s.put if self.hf else self.s)(tokens.copy())

    def end(self):
        if self.hf and callable(getattr(self.s, "end", None)):
            self.s.end()


def generate(lm, input_ids=None, *, attention_mask=None, max_new_tokens, min_new_tokens=0,
             num_beams=1, do_sample=False, temperature=1.0, top_k=50, top_p=1.0, min_p=None,
             repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
             early_stopping=False, num_return_sequences=1, eos_token_id=None, pad_token_id=None,
             bos_token_id=None, seed=None, output_scores=False, streamer=None,
             backend: str | None = None) -> GenerateOutput:
    """Decode from prompts as Hugging Face ``model.generate`` does, with its names and defaults.

    ``input_ids``: int (batch, P) with ``attention_mask`` (0 = padding, on the
    left), a list of token lists of any lengths (left-padded with
    ``pad_token_id``), or None (one prompt: ``[bos_token_id]``).
    ``num_beams=1`` without ``do_sample`` is greedy; ``num_beams > 1`` is beam
    search (with ``do_sample``: beam sampling), each prompt with its own
    finished list; ``do_sample`` alone samples (``seed``: int, None or a NumPy
    Generator; the samples are NumPy's, not torch's).  Processors:
    ``repetition_penalty`` (CTRL's, prompt included, padding not),
    ``no_repeat_ngram_size`` (over the whole row, prompt included),
    ``min_new_tokens`` (eos banned before it); sampling filters ``temperature``,
    ``top_k`` (ties with the k-th stay), ``top_p``, ``min_p``.  In beam search
    the processors act on the log-softmax of the scores, in greedy and sampling
    on the scores, as in Hugging Face.  ``eos_token_id`` (an id or a list),
    ``pad_token_id``, ``bos_token_id`` default to the model's attributes of
    those names (``fastdl.decode.hf.CausalLM`` takes them from the model's
    generation config); without a pad id, the first eos pads, as in Hugging Face.
    ``streamer`` (greedy and sampling): Hugging Face's ``put``/``end`` protocol
    (the prompt first, then each step's (batch,) tokens) or a callable given each
    step's tokens.  Returns a ``GenerateOutput``.
    """
    _load_backends(("beam_topk", "log_softmax", "topk"), backend)
    start = time.perf_counter()
    max_new, length_penalty = _common(_count_arg(max_new_tokens, "max_new_tokens", 1),
                                      length_penalty)
    min_new = _count_arg(min_new_tokens, "min_new_tokens")
    B = _count_arg(num_beams, "num_beams", 1)
    n_ret = _count_arg(num_return_sequences, "num_return_sequences", 1)
    ngram = _count_arg(no_repeat_ngram_size, "no_repeat_ngram_size")
    penalty = check_real(repetition_penalty, "repetition_penalty")
    if not penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {penalty}")
    do_sample = check_flag(do_sample, "do_sample")
    output_scores = check_flag(output_scores, "output_scores")
    warp = _warp_args(temperature, top_k, top_p, min_p) if do_sample else None
    if B > 1:
        _, n_ret, early_stopping, _, _ = _check_beam_args(B, n_ret, early_stopping, 0, 0,
                                                          names=("num_beams",
                                                                 "num_return_sequences"))
    elif n_ret > 1 and not do_sample:
        raise ValueError(f"num_return_sequences must be 1 for greedy decoding (num_beams=1, "
                         f"do_sample=False), got {n_ret}; use num_beams > 1 or do_sample=True")
    if streamer is not None and B > 1:
        raise ValueError("streamer works with greedy decoding and sampling, not with beam "
                         f"search (num_beams={B}), as in Hugging Face")
    eos = eos_token_id if eos_token_id is not None else _attr(lm, "eos_token_id")
    pad = pad_token_id if pad_token_id is not None else _attr(lm, "pad_token_id")
    bos = bos_token_id if bos_token_id is not None else _attr(lm, "bos_token_id")
    given = eos
    eos = eos_ids(eos, None, "eos_token_id")
    if pad is None and eos:                 # Hugging Face pads with the first eos given
        pad = given if isinstance(given, numbers.Integral) else next(iter(given))
    if pad is not None:
        pad = token_id(pad, "pad_token_id", None)
    if input_ids is None and bos is None:
        raise ValueError("give input_ids (the prompts) or bos_token_id (the model has none)")
    if input_ids is None:
        p = _prompts(None, bos=token_id(bos, "bos_token_id", None), name="bos_token_id")
    else:
        p = _prompts(input_ids, attention_mask, pad=pad)
    _check_length(lm, p, max_new)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    stats = SearchStats("beam_search" if B > 1 else "sample" if do_sample else "greedy",
                        prompts=p.batch)
    model = Model(lm, None, list(eos) or None, stats, names=("bos_token_id", "eos_token_id"))
    if B > 1:
        cfg = BeamConfig(B, max_new, alpha=length_penalty, num_return=n_ret,
                         early_stopping=early_stopping, min_new=min_new, ngram=ngram,
                         ngram_padding=True, repetition_penalty=penalty, sample=do_sample,
                         warp=None if warp is None else dict(warp, keep=max(2, len(eos) + 1)),
                         rng=rng, scores=output_scores, beams_name="num_beams")
        out = _beam_output(model, p, cfg, stats, pad, backend)
    else:
        out = _step_output(model, p.repeat(n_ret if do_sample else 1), max_new, min_new, ngram,
                           penalty, warp, rng, output_scores, pad, stats, streamer, backend)
    if pad is not None:
        token_id(pad, "pad_token_id", model.N)
    stats.total_time_s = time.perf_counter() - start
    return out


def _warp_args(temperature, top_k, top_p, min_p):
    temperature = check_real(temperature, "temperature")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if top_k is not None:
        top_k = _count_arg(top_k, "top_k")          # 0 or None: no top-k filter
    top_p = 1.0 if top_p is None else check_real(top_p, "top_p")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None:
        min_p = check_real(min_p, "min_p", low=0.0, high=1.0)
    return dict(temperature=temperature, top_k=top_k or None, top_p=top_p, min_p=min_p)


def _check_length(lm, p: Prompts, max_new: int) -> None:
    limit = _attr(lm, "max_length")
    if limit is None:
        return
    if not isinstance(limit, numbers.Integral):
        raise TypeError(f"the model's max_length must be an int, got {limit!r}")
    if p.width > limit:
        raise ValueError(f"input_ids has prompts of {p.width} tokens, longer than the model "
                         f"allows (max_length={limit})")
    if p.width + max_new > limit:
        raise ValueError(f"max_new_tokens={max_new} after prompts of {p.width} tokens exceeds "
                         f"the model's max_length={limit}; use max_new_tokens <= "
                         f"{limit - p.width}")


def _pad_needed(pad, what):
    if pad is None:
        raise ValueError(f"pad_token_id is needed to pad {what}; give pad_token_id (or "
                         "eos_token_id, which then pads)")
    return pad


def _beam_output(model, p, cfg, stats, pad, backend):
    results, step_scores = run_beams(model, p, cfg, stats, backend)
    B, n_ret = cfg.beams, cfg.num_return
    rows = [r for best in results for r in best]
    L = max((len(r[0]) for r in rows), default=0)
    n = p.batch * n_ret
    short = any(len(best) < n_ret for best in results) or any(len(r[0]) < L for r in rows)
    fill = _pad_needed(pad, "sequences that end early") if short else (pad or 0)
    gen = np.full((n, L), fill, np.int64)
    scores = np.full(n, _NO_SCORE)
    beam_idx = np.full((n, L), -1, np.int64)
    for g, best in enumerate(results):
        for i, (tokens, _, s, path) in enumerate(best):
            r = g * n_ret + i
            gen[r, :len(tokens)] = tokens
            scores[r] = s
            beam_idx[r, :len(tokens)] = g * B + np.asarray(path, np.int64)
    seqs = np.concatenate([np.repeat(p.ids, n_ret, axis=0), gen], axis=1)
    per_step = None
    if step_scores is not None:
        per_step = []
        N = step_scores[0][2].shape[1]
        for t, (groups, width, lp) in enumerate(step_scores):
            full = np.full((p.batch * B, N), -np.inf, lp.dtype)
            for gi, g in enumerate(groups.tolist()):
                block = lp[gi * width:(gi + 1) * width]
                # step 1 scores one row per prompt; Hugging Face's B copies are equal
                full[g * B:(g + 1) * B if t == 0 else g * B + width] = block
            per_step.append(full)
        per_step = tuple(per_step)
    return GenerateOutput(seqs, scores, per_step, beam_idx, stats)


def _step_output(model, p, max_new, min_new, ngram, penalty, warp, rng, want_scores, pad, stats,
                 streamer, backend):
    """Greedy decoding or sampling, every row advanced together; a row leaves the
    batch at eos (its later tokens are padding)."""
    rows = p.batch
    eos = np.array(model.eos, np.int64)
    gen = np.zeros((rows, max_new), np.int64)
    length = np.zeros(rows, np.int64)
    seq_scores = np.zeros(rows)
    live = np.arange(rows)
    per_step = [] if want_scores else None
    stream = None if streamer is None else _Streamer(streamer)
    if stream is not None:
        stream.prompt(p.ids)
    model.start(p)
    t = 0
    for t in range(1, max_new + 1):
        x, m = model.step(fast=warp is None)
        n, N = x.shape
        stats.steps += 1
        stats.candidates_scored += n * N
        stats.hypothesis_tokens += n
        x = P.process(x, lambda: _rows(p, live, gen, t), penalty=penalty, ngram=ngram,
                      ban=eos if t - 1 < min_new else ())
        t0 = time.perf_counter()             # the selection: kernel time
        if warp is not None:
            if (m == -np.inf).any():
                _dead(t, live[np.argmax(m == -np.inf)])
            x = P.warp(x, backend=backend, **warp)
            tok = P.draw(x, rng)
            seq_scores[live] += log_softmax(x, backend=backend)[np.arange(n), tok]
        else:
            # the fused top-1 of each row: Hugging Face's argmax and the token's
            # log-softmax in one pass
            cs, _, tok = group_topk(x, np.zeros(n, x.dtype), n, 1, 1, True, backend)
            cs, tok = cs[:, 0], tok[:, 0]
            if np.isnan(cs).any():
                model.check_rows(x)
            if (cs == -np.inf).any():
                _dead(t, live[np.argmax(cs == -np.inf)])
            seq_scores[live] += cs
        stats.kernel_time_s += time.perf_counter() - t0
        if per_step is not None:
            full = np.full((rows, N), -np.inf, x.dtype)
            full[live] = x
            per_step.append(full)
        gen[live, t - 1] = tok
        length[live] = t
        ended = np.isin(tok, eos)
        if stream is not None:
            step_tok = np.full(rows, -1 if pad is None else pad, np.int64)
            step_tok[live] = tok
            stream.put(step_tok)
        if ended.all() or t == max_new:
            break
        cont = np.flatnonzero(~ended)
        model.advance(cont, tok[cont])
        live = live[cont]
    if stream is not None:
        stream.end()
    L = int(length.max())
    gen = gen[:, :L]
    if (length < L).any():
        fill = _pad_needed(pad, "sequences that end early")
        gen[np.arange(L)[None, :] >= length[:, None]] = fill
    seqs = np.concatenate([p.ids, gen], axis=1)
    return GenerateOutput(seqs, seq_scores, None if per_step is None else tuple(per_step), None,
                          stats)


def _rows(p, live, gen, t):
    """The live rows' tokens so far (prompt, padding included) and which are not padding."""
    seqs = np.concatenate([p.ids[live], gen[live, :t - 1]], axis=1)
    counted = np.concatenate([p.full_mask()[live] == 1, np.ones((len(live), t - 1), bool)],
                             axis=1)
    return seqs, counted


def _dead(t, row):
    raise ValueError(f"step {t}: the language model (after the processors) gives prompt row "
                     f"{int(row)} no token of finite score")
