"""Exact operation counts of LoRA / QLoRA in the transformer layer H' = LFFN(MHA(H)).

The layer, for H of shape (n, d), h heads, adapter rank r and scale s::

    head_i(H) = softmax(Q_i K_iᵀ / √d) V_i,  Q_i = H W^{Q,i} + s·(H A^{Q,i}) (B^{Q,i})ᵀ  (K_i, V_i alike)
    MHA(H)    = [head_1(H), …, head_h(H)] W^O          W^{Q,K,V,i}: (d, d), W^O: (h·d, d)
    LFFN(X)   = X W^F + s·(X A^F) (B^F)ᵀ               W^F: (d, d), every A, B: (d, r)

``targets`` names the projections that carry an adapter: any of "q", "k", "v" (one
adapter per head each), "o" (W^O: A is (h·d, r), B is (d, r)) and "f" (W^F); the
default is ("q", "k", "v", "f").  A projection y = x W + s·(x A) Bᵀ with x (rows,
d_in) costs rows·d_in·d_out multiply-adds (MACs) for x W, rows·d_in·r for x A and
rows·r·d_out for (x A) Bᵀ, computing x A first (A Bᵀ is never formed); s is
multiplied into the (rows, r) product: rows·r multiplies, counted as ``scale``,
not as MACs.  ``batch`` sequences of n rows multiply every count by ``batch``
(attention runs per sequence).

With ``causal=True`` query i attends to keys j <= i: the counts are those of an
attention that computes only the kept n(n+1)/2 entries per head (scores, their
scaling, exps, P V and every n×n term of the backward).  An attention that computes
the full n×n matrix and then masks it does the ``causal=False`` work.

The softmax count is its exps (n·n per head); the row maxima, sums and divisions
are not counted, nor are the additions that sum gradient contributions.

``document_terms`` / ``lora_table`` set these counts beside the usual O() terms,
which drop the constant factors and, in two places, a factor h: the adapters are
per head, so the LoRA term of MHA is 6·h·n·d·r (not n·d·r), and QLoRA dequantizes
3·h·d² + h·d·d = 4·h·d² weights per MHA forward (not 4·d² = O(d²)).
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

__all__ = ["LORA_TARGETS", "LoRAForwardCounts", "LoRABackwardCounts", "lora_linear_macs",
           "lora_linear_backward_macs", "lora_ffn_macs", "lora_mha_macs", "lora_layer_macs",
           "lora_backward_macs", "lora_trainable_params", "frozen_weight_elements",
           "qlora_dequant_elements", "frozen_weight_bits", "document_terms", "lora_table"]

LORA_TARGETS = ("q", "k", "v", "o", "f")
_DEFAULT = ("q", "k", "v", "f")
_STAGES = ("mha", "ffn", "layer")


class _Sum:
    """Counts add term by term; ``total`` is the multiply-adds (``MAC_FIELDS``)."""

    MAC_FIELDS: tuple = ()

    def __add__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)})

    @property
    def total(self) -> int:
        return sum(getattr(self, f) for f in self.MAC_FIELDS)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total": self.total}


@dataclass(frozen=True)
class LoRAForwardCounts(_Sum):
    """Operation counts of a forward.  MACs: ``base`` (x W of the Q, K, V projections
    of every head and of W^F), ``adapter`` (x A and (s·x A) Bᵀ of every adapted
    projection, W^O's included), ``scores`` (Q_i K_iᵀ), ``pv`` (P_i V_i), ``out_proj``
    ([head_1 … head_h] W^O); ``total`` is their sum.  Not MACs: ``scale`` (multiplies
    by s), ``score_scale`` (multiplies by 1/√d), ``softmax_exps``."""

    base: int = 0
    adapter: int = 0
    scale: int = 0
    scores: int = 0
    score_scale: int = 0
    softmax_exps: int = 0
    pv: int = 0
    out_proj: int = 0

    MAC_FIELDS = ("base", "adapter", "scores", "pv", "out_proj")


@dataclass(frozen=True)
class LoRABackwardCounts(_Sum):
    """Operation counts of a backward to every adapter and to the input (no gradient
    for the frozen weights).  For an adapted projection y = x W + s·(x A) Bᵀ, with
    g = s·(dy B)::

        base_dx    dy Wᵀ                      rows·d_out·d_in   (only when dx is needed)
        adapter    dy B                       rows·d_out·r
                   dA = xᵀ g                  d_in·rows·r
                   dB = s·dyᵀ (x A)           d_out·rows·r      (x A kept from the forward)
        adapter_dx g Aᵀ                       rows·r·d_in       (only when dx is needed)
        scale      g = s·(dy B), dB = s·(…)   rows·r + d_out·r multiplies

    an unadapted projection only ``base_dx``.  Attention, per head: ``dv`` = Pᵀ dO,
    ``dp`` = dO Vᵀ, ``softmax`` (dS from dP and P: one count per score entry, not
    MACs), ``score_scale`` (dS/√d, multiplies), ``dq`` = dS K, ``dk`` = dSᵀ Q; and
    ``out_proj_dx`` = dO (W^O)ᵀ.  ``total`` sums the MAC fields."""

    base_dx: int = 0
    adapter: int = 0
    adapter_dx: int = 0
    scale: int = 0
    dv: int = 0
    dp: int = 0
    softmax: int = 0
    score_scale: int = 0
    dq: int = 0
    dk: int = 0
    out_proj_dx: int = 0

    MAC_FIELDS = ("base_dx", "adapter", "adapter_dx", "dv", "dp", "dq", "dk", "out_proj_dx")


# ---------------------------------------------------------------- argument checks

def _int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _rank(r, bound: int, text: str) -> int:
    r = _int(r, "r")
    if r > bound:
        raise ValueError(f"r must be <= {text}, got r={r}")
    return r


def _targets(targets) -> frozenset:
    if isinstance(targets, str) or not hasattr(targets, "__iter__"):
        raise TypeError(f"targets must be a tuple of names from {LORA_TARGETS}, got {targets!r}")
    t = tuple(targets)
    bad = [x for x in t if x not in LORA_TARGETS]
    if bad or len(set(t)) != len(t):
        raise ValueError(f"targets must be distinct names from {LORA_TARGETS}, got {targets!r}")
    return frozenset(t)


def _stage(stage) -> str:
    if stage not in _STAGES:
        raise ValueError(f"stage must be one of {', '.join(map(repr, _STAGES))}, got {stage!r}")
    return stage


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def _kept(n: int, causal: bool) -> int:
    """Score entries per head: n², or n(n+1)/2 when query i sees keys j <= i."""
    return n * (n + 1) // 2 if causal else n * n


# ---------------------------------------------------------------- one projection

def lora_linear_macs(n: int, d_in: int, d_out: int, r: int, *,
                     adapter: bool = True) -> LoRAForwardCounts:
    """y = x W + s·(x A) Bᵀ for x (n, d_in): base n·d_in·d_out, adapter n·d_in·r +
    n·r·d_out, scale n·r (without the adapter: base only)."""
    n, d_in, d_out = _int(n, "n"), _int(d_in, "d_in"), _int(d_out, "d_out")
    r = _rank(r, min(d_in, d_out), f"min(d_in, d_out) = {min(d_in, d_out)}")
    if not _flag(adapter, "adapter"):
        return LoRAForwardCounts(base=n * d_in * d_out)
    return LoRAForwardCounts(base=n * d_in * d_out, adapter=n * d_in * r + n * r * d_out,
                             scale=n * r)


def lora_linear_backward_macs(n: int, d_in: int, d_out: int, r: int, *, adapter: bool = True,
                              need_dx: bool = True) -> LoRABackwardCounts:
    """Backward of ``lora_linear_macs``'s projection (see ``LoRABackwardCounts``)."""
    n, d_in, d_out = _int(n, "n"), _int(d_in, "d_in"), _int(d_out, "d_out")
    r = _rank(r, min(d_in, d_out), f"min(d_in, d_out) = {min(d_in, d_out)}")
    dx = _flag(need_dx, "need_dx")
    base_dx = n * d_out * d_in if dx else 0
    if not _flag(adapter, "adapter"):
        return LoRABackwardCounts(base_dx=base_dx)
    return LoRABackwardCounts(base_dx=base_dx, adapter=n * d_out * r + d_in * n * r + d_out * n * r,
                              adapter_dx=n * r * d_in if dx else 0, scale=n * r + d_out * r)


# ---------------------------------------------------------------- the layer's stages

def _check(n, d, h, r, targets, batch):
    d = _int(d, "d")
    return (_int(n, "n"), d, _int(h, "h"), _rank(r, d, f"d = {d}"), _targets(targets),
            _int(batch, "batch"))


def lora_ffn_macs(n: int, d: int, r: int, *, targets=_DEFAULT,
                  batch: int = 1) -> LoRAForwardCounts:
    """LFFN(X) = X W^F + s·(X A^F)(B^F)ᵀ: base n·d², adapter 2·n·d·r and scale n·r when
    "f" is in ``targets`` (times ``batch``)."""
    n, d, _, r, t, batch = _check(n, d, 1, r, targets, batch)
    return lora_linear_macs(batch * n, d, d, r, adapter="f" in t)


def lora_mha_macs(n: int, d: int, h: int, r: int, *, targets=_DEFAULT, causal: bool = False,
                  batch: int = 1) -> LoRAForwardCounts:
    """MHA(H) = [head_1(H) … head_h(H)] W^O, per sequence:

    base 3·h·n·d² (Q, K, V of every head); adapter 2·h·n·d·r per adapted one of q, k, v
    (6·h·n·d·r for all three) and n·h·d·r + n·r·d for "o"; scale h·n·r per adapted one
    of q, k, v and n·r for "o"; scores and pv h·e·d MACs, score_scale and softmax_exps
    h·e, with e = n² entries per head (n(n+1)/2 causal); out_proj n·h·d·d."""
    n, d, h, r, t, batch = _check(n, d, h, r, targets, batch)
    causal = _flag(causal, "causal")
    rows, e = batch * n, batch * h * _kept(n, causal)
    qkv = sum(1 for x in "qkv" if x in t)
    o = lora_linear_macs(rows, h * d, d, r, adapter="o" in t)
    return LoRAForwardCounts(
        base=3 * h * rows * d * d, adapter=qkv * h * 2 * rows * d * r + o.adapter,
        scale=qkv * h * rows * r + o.scale, scores=e * d, score_scale=e, softmax_exps=e,
        pv=e * d, out_proj=o.base)


def lora_layer_macs(n: int, d: int, h: int, r: int, *, targets=_DEFAULT, causal: bool = False,
                    batch: int = 1) -> LoRAForwardCounts:
    """The whole layer's forward: ``lora_mha_macs`` + ``lora_ffn_macs``."""
    return (lora_mha_macs(n, d, h, r, targets=targets, causal=causal, batch=batch)
            + lora_ffn_macs(n, d, r, targets=targets, batch=batch))


def lora_backward_macs(n: int, d: int, h: int, r: int, *, stage: str = "layer",
                       targets=_DEFAULT, causal: bool = False, batch: int = 1,
                       need_dx: bool = True) -> LoRABackwardCounts:
    """The backward of a stage ("mha", "ffn" or the whole "layer") to every adapter and,
    with ``need_dx``, to the stage's input (see ``LoRABackwardCounts`` for the terms).

    FFN: ``lora_linear_backward_macs(n, d, d, r)``.  MHA per sequence: W^O's backward
    with its dx always (out_proj_dx n·h·d·d: the heads need dO); per head dv, dp, dq, dk
    e·d MACs each, softmax and score_scale e (e = n², or n(n+1)/2 causal); then the
    Q, K, V projections of every head with dx = dL/dH only if ``need_dx``.  In the
    layer the FFN's dx is always computed (MHA needs it)."""
    n, d, h, r, t, batch = _check(n, d, h, r, targets, batch)
    stage, causal, need_dx = _stage(stage), _flag(causal, "causal"), _flag(need_dx, "need_dx")
    rows = batch * n
    total = LoRABackwardCounts()
    if stage in ("ffn", "layer"):
        total += lora_linear_backward_macs(rows, d, d, r, adapter="f" in t,
                                           need_dx=need_dx or stage == "layer")
    if stage in ("mha", "layer"):
        o = lora_linear_backward_macs(rows, h * d, d, r, adapter="o" in t, need_dx=True)
        total += dataclasses.replace(o, base_dx=0, out_proj_dx=o.base_dx)
        e = batch * h * _kept(n, causal)
        total += LoRABackwardCounts(dv=e * d, dp=e * d, softmax=e, score_scale=e, dq=e * d,
                                    dk=e * d)
        for x in "qkv":
            one = lora_linear_backward_macs(rows, d, d, r, adapter=x in t, need_dx=need_dx)
            total += LoRABackwardCounts(**{f: h * v for f, v in dataclasses.asdict(one).items()})
    return total


# ---------------------------------------------------------------- parameters and memory

def lora_trainable_params(d: int, h: int, r: int, *, stage: str = "layer",
                          targets=_DEFAULT) -> int:
    """Adapter parameters: 2·d·r per adapted one of q, k, v per head (6·h·d·r for all
    three), (h·d + d)·r for "o", 2·d·r for "f"."""
    _, d, h, r, t, _ = _check(1, d, h, r, targets, 1)
    stage = _stage(stage)
    mha = sum(1 for x in "qkv" if x in t) * h * 2 * d * r + (("o" in t) * (h * d + d) * r)
    ffn = ("f" in t) * 2 * d * r
    return {"mha": mha, "ffn": ffn, "layer": mha + ffn}[stage]


def _matrices(d: int, h: int, stage: str, side_by_side: bool = False) -> list:
    """Shapes of the frozen (d_in, d_out) weights of a stage, one per stored matrix;
    ``side_by_side``: each projection's h heads as one (d, h·d) matrix, as
    ``fastdl.lora.TransformerLayer`` stores block-wise quantized weights."""
    qkv = [(d, h * d)] * 3 if side_by_side else [(d, d)] * (3 * h)
    mha = qkv + [(h * d, d)]
    return {"mha": mha, "ffn": [(d, d)], "layer": mha + [(d, d)]}[stage]


def frozen_weight_elements(d: int, h: int, *, stage: str = "layer") -> int:
    """Frozen weights of a stage: MHA 3·h·d² + h·d·d, LFFN d²."""
    d, h, stage = _int(d, "d"), _int(h, "h"), _stage(stage)
    return sum(a * b for a, b in _matrices(d, h, stage))


def qlora_dequant_elements(d: int, h: int, *, stage: str = "layer", backward: bool = False,
                           need_dx: bool = True) -> int:
    """Weights dequantized when the stage's frozen weights are quantized, per forward:
    MHA 3·h·d² + h·d·d (W^{Q,K,V} of every head and W^O), LFFN d² — each weight once
    per pass, however many rows.  ``backward=True``: those the backward's dx = dy Wᵀ
    reads again: all of them, except the Q, K, V weights of MHA without ``need_dx``."""
    d, h, stage = _int(d, "d"), _int(h, "h"), _stage(stage)
    count = frozen_weight_elements(d, h, stage=stage)
    if _flag(backward, "backward") and not _flag(need_dx, "need_dx"):
        # W^O and W^F still pass dx on inside the layer; only the input projections stop
        count = 0 if stage == "ffn" else count - 3 * h * d * d
    return count


def _quant(quant) -> dict | None:
    if quant is None:
        return None
    if not isinstance(quant, dict) or "bits" not in quant:
        raise TypeError(f"quant must be None or a dict with 'bits' (and optionally 'block_size', "
                        f"'double_quant', 'scheme', 'rounding'), got {quant!r}")
    extra = set(quant) - {"bits", "block_size", "double_quant", "scheme", "rounding"}
    if extra:
        raise ValueError(f"quant has unknown keys {sorted(extra)}; expected 'bits', "
                         f"'block_size', 'double_quant', 'scheme', 'rounding'")
    bits = _int(quant["bits"], "quant['bits']", minimum=2)
    if bits > 8:
        raise ValueError(f"quant['bits'] must be in 2..8, got {bits}")
    block = quant.get("block_size", 64)
    if block is not None:
        block = _int(block, "quant['block_size']", minimum=2)
    dq = _flag(quant.get("double_quant", False), "quant['double_quant']")
    if dq and block is None:
        raise ValueError("quant['double_quant']=True needs a block_size, got block_size=None")
    return {"bits": bits, "block_size": block, "double_quant": dq}


def frozen_weight_bits(d: int, h: int, *, stage: str = "layer", quant=None) -> int:
    """Bits of a stage's frozen weights as ``fastdl.lora.TransformerLayer`` stores them:
    float32 is 32 per weight; ``quant`` = {"bits", "block_size" (default 64, None: one
    scale per matrix), "double_quant" (default False)} gives 8·``fastdl.quant.storage_bytes``
    per stored matrix: the m-bit codes (4-bit ones packed two per byte) plus the scales.
    Block-wise, each projection's h heads are one (d, h·d) matrix (the same blocks as
    per head; with double quantization the scales' groups of 256 run across heads); with
    one scale per matrix, every head's W^{Q,K,V} is its own matrix."""
    d, h, stage = _int(d, "d"), _int(h, "h"), _stage(stage)
    q = _quant(quant)
    if q is None:
        return 32 * frozen_weight_elements(d, h, stage=stage)
    from fastdl.quant import storage_bytes     # here: fastdl.complexity stays light to import
    return 8 * sum(storage_bytes(s, q["bits"], q["block_size"], q["double_quant"])
                   for s in _matrices(d, h, stage, side_by_side=q["block_size"] is not None))


# ---------------------------------------------------------------- beside the O() terms

def document_terms(n: int, d: int, h: int, r: int, *, bits: int = 4) -> dict:
    """The usual O() terms of the course's answer, each evaluated without its constants:
    name -> (text, value).  Time terms are MACs of one forward."""
    n, d, h, r = _int(n, "n"), _int(d, "d"), _int(h, "h"), _rank(r, _int(d, "d"), f"d = {d}")
    m = _int(bits, "bits", minimum=2)
    return {
        "lora_ffn_time": ("O(nd² + ndr)", n * d * d + n * d * r),
        "lora_mha_time": ("O(hnd² + ndr + hn²d)", h * n * d * d + n * d * r + h * n * n * d),
        "qlora_ffn_dequant": ("O(d²)", d * d),
        "qlora_mha_dequant": ("O(4d²) = O(d²)", 4 * d * d),
        "ffn_trainable": ("O(2dr)", 2 * d * r),
        "mha_trainable": ("O(6hdr)", 6 * h * d * r),
        "ffn_frozen_bits_float32": ("32·d²", 32 * d * d),
        "ffn_frozen_bits_quantized": (f"m·d² (m = {m})", m * d * d),
    }


def lora_table(n: int, d: int, h: int, r: int, *, causal: bool = False, quant=None) -> list:
    """Rows (quantity, counted, O() text, O() value, note) for the course's targets
    ("q", "k", "v", "f"): exact counts beside the O() terms, and where the O() term
    is loose, by what.  ``quant`` (default 4-bit NF4-like: bits 4, blocks of 64,
    double quantization) sets the QLoRA storage."""
    quant = _quant(quant or {"bits": 4, "block_size": 64, "double_quant": True})
    doc = document_terms(n, d, h, r, bits=quant["bits"])
    ffn = lora_ffn_macs(n, d, r)
    mha = lora_mha_macs(n, d, h, r, causal=causal)
    rows = [
        ("LoRA LFFN time (MACs)", ffn.total, *doc["lora_ffn_time"],
         f"n·d² + 2·n·d·r: x A and (x A) Bᵀ are n·d·r each; plus {ffn.scale} multiplies by s"),
        ("LoRA MHA time (MACs)", mha.total, *doc["lora_mha_time"],
         f"3·h·n·d² (Q, K, V) + h·n·d² (W^O) + 6·h·n·d·r + 2·h·e·d (e = "
         f"{_kept(n, causal)} scores per head): the adapters are per head, so the LoRA term "
         f"is 6·h·n·d·r = {mha.adapter}, not n·d·r = {n * d * r}"),
        ("QLoRA LFFN dequantized weights", qlora_dequant_elements(d, h, stage="ffn"),
         *doc["qlora_ffn_dequant"], "exact: d² per forward"),
        ("QLoRA MHA dequantized weights", qlora_dequant_elements(d, h, stage="mha"),
         *doc["qlora_mha_dequant"],
         f"3·h·d² + h·d·d = 4·h·d²: per-head W^Q, W^K, W^V and W^O (h·d × d), "
         f"h = {h} times 4·d²"),
        ("LFFN trainable parameters", lora_trainable_params(d, h, r, stage="ffn"),
         *doc["ffn_trainable"], "exact"),
        ("MHA trainable parameters", lora_trainable_params(d, h, r, stage="mha"),
         *doc["mha_trainable"], "exact"),
        ("LFFN frozen bits, float32", frozen_weight_bits(d, h, stage="ffn"),
         *doc["ffn_frozen_bits_float32"], "exact"),
        ("LFFN frozen bits, quantized", frozen_weight_bits(d, h, stage="ffn", quant=quant),
         *doc["ffn_frozen_bits_quantized"],
         f"m·d² plus the block scales (block {quant['block_size']}, double quantization "
         f"{'on' if quant['double_quant'] else 'off'})"),
        ("MHA frozen bits, float32", frozen_weight_bits(d, h, stage="mha"),
         "32·4hd²", 32 * 4 * h * d * d, "exact: 3·h·d² + h·d·d weights"),
        ("MHA frozen bits, quantized", frozen_weight_bits(d, h, stage="mha", quant=quant),
         f"m·4hd² (m = {quant['bits']})", quant["bits"] * 4 * h * d * d,
         "m bits per weight plus the block scales of each matrix"),
    ]
    return rows
