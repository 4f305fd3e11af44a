"""Benchmark cases for ``generate``: beam search from a batch of prompts, 32 new tokens.

Two models, N = 50257: ``examples.SyntheticLM`` (a table lookup: almost all of
a step is the search) and a tiny random GPT-2 through
``fastdl.decode.hf.CausalLM``; batch 1 and 8 prompts (lengths 3 to 8, left
padded) × 4 beams, no eos (every search runs all 32 steps).

The timed call is the whole ``generate``; peer ``hf generate`` is Hugging
Face's ``generate`` with the same settings on the same model (for the
synthetic LM, its transformers port in ``_hf_models``).  Metrics, medians of
repeated runs within the same benchmark run:

* ``overhead/step ms``: fastdl's time per step outside the model
  (``stats.search_time_s / steps``: the search, the checks, the cache reorder;
  ``reorder/step ms`` is the model's ``reorder`` alone);
* ``hf overhead/step ms``: Hugging Face's ``generate`` time minus its model's
  forward passes, per forward pass;
* ``beam_topk in search ms``: the step's fused top-k (``stats.kernel_time_s``
  per step: the batched ``beam_topk`` call on the model's scores; its cost
  depends on them, e.g. flat logits keep more candidates near the top) and
  ``beam_topk alone ms``: the same call on random logits (normal, sd 3);
* ``overhead/hf``, ``overhead/beam_topk`` (over the step's fused top-k) and,
  for batch 8, ``overhead b8/b1`` (per step, against batch 1 measured in the
  same call) with their targets.
"""
from __future__ import annotations

import importlib.util
import statistics
import time

import numpy as np

from fastdl.bench.case import Case, register
from fastdl.decode import beam_topk, examples, generate

N, BEAMS, T = 50257, 4, 32


def _have(*mods):
    return all(importlib.util.find_spec(m) is not None for m in mods)


def _prompts(batch, seed=0):
    rng = np.random.default_rng(seed)
    lengths = [6] if batch == 1 else rng.integers(3, 9, batch).tolist()
    P = max(lengths)
    ids = np.zeros((batch, P), np.int64)
    mask = np.zeros((batch, P), np.int64)
    for i, n in enumerate(lengths):
        ids[i, P - n:] = rng.integers(1, N, n)
        mask[i, P - n:] = 1
    return ids, mask


def _fastdl(inp, backend, batch):
    ids, mask = inp["prompts"][batch]
    return generate(inp["lm"], ids, attention_mask=mask, max_new_tokens=T, num_beams=BEAMS,
                    pad_token_id=0, backend=backend)


def _hf_run(inp, batch):
    import torch
    ids, mask = inp["prompts"][batch]
    with torch.no_grad():
        return inp["hf"].generate(input_ids=torch.from_numpy(ids),
                                  attention_mask=torch.from_numpy(mask), max_new_tokens=T,
                                  num_beams=BEAMS, do_sample=False, pad_token_id=0,
                                  use_cache=inp["use_cache"])


def _hf_overhead(inp, batch, runs=3):
    from fastdl.bench._hf_models import model_timer
    per_step = []
    for _ in range(runs):
        with model_timer(inp["hf"]) as timer:
            t0 = time.perf_counter()
            _hf_run(inp, batch)
            total = time.perf_counter() - t0
        per_step.append((total - timer.seconds) / max(timer.calls, 1))
    return statistics.median(per_step)


def _overhead(inp, backend, batch, runs=5):
    """Median per-step time outside the model, and of the fused top-k inside it."""
    stats = [_fastdl(inp, backend, batch).stats for _ in range(runs)]
    return (statistics.median(s.search_time_s / s.steps for s in stats),
            statistics.median(s.kernel_time_s / s.steps for s in stats),
            statistics.median(s.reorder_time_s / s.steps for s in stats))


def _case(model, batch):
    hf_ok = _have("torch", "transformers")

    def setup():
        inp = {"prompts": {b: _prompts(b) for b in {1, batch}}}
        rng = np.random.default_rng(1)
        inp["x"] = (rng.standard_normal((batch, BEAMS, N)) * 3).astype(np.float32)
        inp["s"] = -rng.random((batch, BEAMS)).astype(np.float32)
        if model == "synthetic":
            inp["lm"] = examples.SyntheticLM(N)
            if hf_ok:
                from fastdl.bench._hf_models import synthetic_hf
                inp["hf"], inp["use_cache"] = synthetic_hf(inp["lm"]), False
        else:
            from fastdl.bench._hf_models import tiny_gpt2
            from fastdl.decode.hf import CausalLM
            inp["hf"], inp["use_cache"] = tiny_gpt2(N), True
            inp["lm"] = CausalLM(inp["hf"])
        return inp

    def metrics(inp, backend):
        over, in_search, reorder = _overhead(inp, backend, batch)
        alone = []
        for _ in range(20):
            t0 = time.perf_counter()
            beam_topk(inp["x"], inp["s"], 2 * BEAMS, backend=backend)
            alone.append(time.perf_counter() - t0)
        out = {"overhead/step ms": over * 1e3, "reorder/step ms": reorder * 1e3,
               "beam_topk in search ms": in_search * 1e3,
               "beam_topk alone ms": statistics.median(alone) * 1e3,
               "overhead/beam_topk": over / in_search}
        if "hf" in inp:
            hf = _hf_overhead(inp, batch)
            out.update({"hf overhead/step ms": hf * 1e3, "overhead/hf": over / hf})
        if batch > 1:
            out["overhead b8/b1"] = over / _overhead(inp, backend, 1)[0]
        return out

    targets = {"max:overhead/beam_topk": 2.0}
    if hf_ok:
        targets["max:overhead/hf"] = 0.5
    if batch > 1:
        targets["max:overhead b8/b1"] = 3.0
    rows = batch * BEAMS
    return Case(
        name=f"generate/{model}/N{N}/b{batch}x{BEAMS}beams/T{T}", op="beam_topk", setup=setup,
        call=lambda inp, backend: _fastdl(inp, backend, batch),
        bytes_read=T * rows * N * 4, bytes_written=T * rows * 16, flops=6 * T * rows * N,
        peers={"hf generate": (lambda inp: lambda: _hf_run(inp, batch))} if hf_ok else {},
        metrics=metrics, targets={"cython": targets}, quick=False,
        params={"model": model, "batch": batch, "num_beams": BEAMS, "N": N, "T": T},
    )


for _model in ("synthetic", "gpt2"):
    if _model == "gpt2" and not _have("torch", "transformers"):
        continue
    for _b in (1, 8):
        register(_case(_model, _b))
