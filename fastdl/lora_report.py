"""LoRA or QLoRA for each stage of the transformer layer, decided from measurements,
and the counted-vs-formula complexity table.

``measure_stages`` times one forward + backward of the multi-head attention (MHA)
and of the linear feed-forward layer (LFFN) alone, with float32 frozen weights
(LoRA) and with quantized ones (QLoRA), and records each choice's frozen-weight
bytes and trainable parameters.  ``decide`` fills the course's decision table
from them: under a memory limit (the frozen weights of a stage must fit in
``memory_limit`` bytes; LoRA keeps full precision, so it is chosen when it fits),
for speed (the faster measured; "either" within 10%), and both (the faster of those that
fit; a tie goes to LoRA, which keeps full precision).
``complexity_rows`` runs an instrumented forward and backward
(``fastdl.lora.count_ops``) and sets the counts beside the exact formulas of
``fastdl.complexity`` and the usual O() terms.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fastdl import complexity
from fastdl.lora import TransformerLayer, count_ops

__all__ = ["StageMeasure", "measure_stages", "decide", "complexity_rows", "STAGES"]

STAGES = ("mha", "ffn")
METHODS = ("LoRA", "QLoRA")


@dataclass(frozen=True)
class StageMeasure:
    stage: str            # "mha" or "ffn"
    method: str           # "LoRA" or "QLoRA"
    seconds: float        # median of forward + backward
    frozen_bytes: int
    trainable: int


def _layer(d, h, r, quant, seed):
    q = None if quant is None else {"mha": quant, "ffn": quant}
    lay = TransformerLayer(d, h, r, quantize=q, rng=seed)
    rng = np.random.default_rng(seed)
    for k, v in lay.params.items():
        if k.endswith(".B"):
            v[...] = rng.standard_normal(v.shape) * 0.1
    return lay


def measure_stages(d=1024, h=4, n=128, r=8, *, quant="nf4", repeat=5, seed=0,
                   backend=None) -> list[StageMeasure]:
    """The four (stage, method) measurements; QLoRA quantizes with ``quant`` (a preset
    name of ``fastdl.lora_transformer.QUANT_PRESETS`` or quantize keywords).  LoRA and
    QLoRA runs alternate, so a change of machine load hits both."""
    layers = {"LoRA": _layer(d, h, r, None, seed), "QLoRA": _layer(d, h, r, quant, seed)}
    rng = np.random.default_rng(seed + 1)
    H = rng.standard_normal((n, d), dtype=np.float32)
    dH = rng.standard_normal((n, d), dtype=np.float32)
    times = {(s, m): [] for s in STAGES for m in METHODS}
    for rep in range(repeat + 1):                       # the first round warms up
        for s in STAGES:
            for m in METHODS:
                lay = layers[m]
                t0 = time.perf_counter()
                lay.forward(H, stage=s, backend=backend)
                lay.backward(dH, backend=backend)
                if rep:
                    times[s, m].append(time.perf_counter() - t0)
    out = []
    for s in STAGES:
        for m in METHODS:
            lay = layers[m]
            out.append(StageMeasure(s, m, float(np.median(times[s, m])), lay.frozen_bytes(s),
                                    complexity.lora_trainable_params(d, h, r, stage=s)))
    return out


def decide(measures, memory_limit: int, *, tie: float = 0.1) -> dict:
    """{stage: {"memory limit": choice, "faster": choice, "both": choice, "why": text}}.
    A choice is "LoRA", "QLoRA", "either" (times within ``tie``, 10% by default: the
    machine's noise) or "neither fits"; a tie goes to LoRA where a choice must be made,
    since it keeps the weights' full precision."""
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, np.integer)) \
            or memory_limit <= 0:
        raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit!r}")
    by = {(m.stage, m.method): m for m in measures}

    def faster(a, b):
        """The clearly faster of a and b, or None for a tie."""
        lo, hi = sorted((a, b), key=lambda m: m.seconds)
        return lo if hi.seconds > (1 + tie) * lo.seconds else None

    table = {}
    for s in STAGES:
        lo, ql = by[s, "LoRA"], by[s, "QLoRA"]
        fits = [m for m in (lo, ql) if m.frozen_bytes <= memory_limit]
        mem = "LoRA" if lo in fits else ("QLoRA" if ql in fits else "neither fits")
        win = faster(lo, ql)
        fast = win.method if win else "either"
        if len(fits) == 2:
            both = (win or lo).method
        else:
            both = fits[0].method if fits else "neither fits"
        why = (f"float32 weights {lo.frozen_bytes / 2**20:.1f} MiB vs quantized "
               f"{ql.frozen_bytes / 2**20:.2f} MiB (limit {memory_limit / 2**20:.1f} MiB); "
               f"forward+backward {lo.seconds * 1e3:.2f} ms vs {ql.seconds * 1e3:.2f} ms")
        table[s] = {"memory limit": mem, "faster": fast, "both": both, "why": why}
    return table


def _macs(counts: dict, cls) -> int:
    return sum(counts.get(k, 0) for k in cls.MAC_FIELDS)


def complexity_rows(n=16, d=32, h=2, r=4, *, causal=False, quant="nf4", seed=0) -> list:
    """Rows (quantity, counted, exact formula, O() term, O() value): the counts of
    instrumented forwards and backwards (``fastdl.lora.count_ops``) of each stage of a
    QLoRA layer beside ``fastdl.complexity``'s exact formulas and the usual O() terms
    evaluated without their constants."""
    from fastdl.lora_transformer import QUANT_PRESETS
    spec = QUANT_PRESETS[quant] if isinstance(quant, str) else dict(quant)
    lay = _layer(d, h, r, spec, seed)
    lay.causal = causal
    H = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    counted = {}
    for stage in ("mha", "ffn", "layer"):
        with count_ops() as c:
            lay.backward(lay.forward(H, stage=stage))
        counted[stage] = c
    Fw, Bw = complexity.LoRAForwardCounts, complexity.LoRABackwardCounts
    mha = complexity.lora_mha_macs(n, d, h, r, causal=causal)
    ffn = complexity.lora_ffn_macs(n, d, r)
    bwd = complexity.lora_backward_macs(n, d, h, r, causal=causal)
    doc = complexity.document_terms(n, d, h, r, bits=spec["bits"])
    cm, cf, cl = counted["mha"], counted["ffn"], counted["layer"]
    ad = lay.lora_layers()
    return [
        ("LFFN forward MACs", _macs(cf["forward"], Fw), ffn.total, *doc["lora_ffn_time"]),
        ("MHA forward MACs", _macs(cm["forward"], Fw), mha.total, *doc["lora_mha_time"]),
        ("  MHA adapter MACs (per head)", cm["forward"]["adapter"], mha.adapter,
         "O(ndr)", n * d * r),
        ("layer backward MACs", _macs(cl["backward"], Bw), bwd.total, "—", None),
        ("softmax exps (MHA)", cm["forward"]["softmax_exps"], mha.softmax_exps,
         "O(hn²)", h * n * n),
        ("QLoRA dequantized weights, LFFN", cf["dequantized"]["forward"],
         complexity.qlora_dequant_elements(d, h, stage="ffn"), *doc["qlora_ffn_dequant"]),
        ("QLoRA dequantized weights, MHA", cm["dequantized"]["forward"],
         complexity.qlora_dequant_elements(d, h, stage="mha"), *doc["qlora_mha_dequant"]),
        ("trainable parameters, LFFN", ad["ffn"].trainable_parameters(),
         complexity.lora_trainable_params(d, h, r, stage="ffn"), *doc["ffn_trainable"]),
        ("trainable parameters, MHA", sum(m.trainable_parameters() for k, m in ad.items()
                                          if k.startswith("heads.")),
         complexity.lora_trainable_params(d, h, r, stage="mha"), *doc["mha_trainable"]),
        ("frozen bits, LFFN, quantized", 8 * lay.frozen_bytes("ffn"),
         complexity.frozen_weight_bits(d, h, stage="ffn", quant=spec),
         *doc["ffn_frozen_bits_quantized"]),
        ("frozen bits, MHA, quantized", 8 * lay.frozen_bytes("mha"),
         complexity.frozen_weight_bits(d, h, stage="mha", quant=spec),
         f"m·4hd² (m = {spec['bits']})", spec["bits"] * 4 * h * d * d),
    ]
