"""One table of every exact count of ``fastdl.complexity`` beside the count of an
instrumented run of the library done on small shapes, and the course's value where
it gives one.

Each row is ``{"area", "quantity", "formula", "params", "analytic", "counted",
"relation", "document"}``: ``relation`` "==" when the run must equal the formula,
"<=" when the formula is a worst-case bound the run may stay under (comparison
counts); ``counted`` None only for the course's examples too large to run (a table of
20000^10 probabilities); ``document`` is the course's value or expression, or None.
"""
from __future__ import annotations

import numpy as np

from fastdl import complexity as cx
from fastdl import complexity_decode as cd
from fastdl import complexity_norm as cn

__all__ = ["DEFAULT_SHAPES", "report"]

# the norm shape is the course's 4 x 2 x 3 tensor (batch, channels, features)
DEFAULT_SHAPES = {
    "norm": {"shape": (4, 2, 3), "group_shape": (2, 4, 3, 3), "num_groups": 2},
    "decode": {"N": 5, "B": 3, "T": 4},
    "birnn": {"T": 4, "B": 2, "d_in": 3, "hidden": 5, "d_out": 2},
    "lora": {"n": 6, "d": 8, "h": 2, "r": 2},
}


def _row(area, quantity, formula, params, analytic, counted, document=None, relation="=="):
    return {"area": area, "quantity": quantity, "formula": formula, "params": dict(params),
            "analytic": int(analytic), "counted": None if counted is None else int(counted),
            "relation": relation, "document": document}


def _shapes(shapes) -> dict:
    if shapes is None:
        return {k: dict(v) for k, v in DEFAULT_SHAPES.items()}
    if not isinstance(shapes, dict) or set(shapes) - set(DEFAULT_SHAPES):
        raise ValueError(f"shapes must be None or a dict with keys from "
                         f"{sorted(DEFAULT_SHAPES)}, got {shapes!r}")
    out = {}
    for k, v in DEFAULT_SHAPES.items():
        extra = shapes.get(k, {})
        if not isinstance(extra, dict) or set(extra) - set(v):
            raise ValueError(f"shapes[{k!r}] must be a dict with keys from {sorted(v)}, "
                             f"got {extra!r}")
        out[k] = {**v, **extra}
    return out


# ---------------------------------------------------------------- normalization

_NORM_TEXT = {"batch": ("N·S", "C"), "layer": ("C·S", "N"), "instance": ("S", "N·C"),
              "group": ("(C/G)·S", "N·G")}
# the course's divisors and statistic counts for its 4 x 2 x 3 tensor
_NORM_DOC = {"batch": ("1/(B·F) = 1/12", "μ_batch: 2 values"),
             "layer": ("1/(C·F) = 1/6", "μ_layer: 4 values"),
             "instance": ("1/F = 1/3", "μ_instance: 4 x 2 values")}


def _norm_rows(s) -> list:
    rows = []
    for kind in cn.NORM_STAT_KINDS:
        group = kind == "group"
        shape = tuple(s["group_shape"] if group else s["shape"])
        G = s["num_groups"] if group else None
        m = cn.measure_norm_stats(shape, kind, num_groups=G)
        sizes = set(m["members"].values()) | {v for v in m["divisors"].values()
                                              if isinstance(v, int)}
        per = sizes.pop() if len(sizes) == 1 else -1       # -1: statistics of unequal size
        params = {"shape": shape, **({"G": G} if group else {})}
        doc = _NORM_DOC.get(kind) if shape == (4, 2, 3) else None
        per_text, stat_text = _NORM_TEXT[kind]
        rows += [
            _row("norm", f"{kind} norm: elements per statistic", per_text, params,
                 cn.norm_elements_per_statistic(shape, kind, num_groups=G), per,
                 doc and doc[0]),
            _row("norm", f"{kind} norm: statistics", stat_text, params,
                 cn.norm_statistics(shape, kind, num_groups=G), m["statistics"],
                 doc and doc[1]),
            _row("norm", f"{kind} norm: elements read (one pass)", "N·C·S", params,
                 cn.norm_elements_read(shape, kind, num_groups=G), m["elements_read"]),
        ]
    return rows


# ---------------------------------------------------------------- decoding

def _decode_rows(s) -> list:
    from fastdl.decode import beam_search, exhaustive_search, greedy
    from fastdl.decode.examples import SyntheticLM
    N, B, T = s["N"], s["B"], s["T"]
    lm = SyntheticLM(N, seed=1, dtype=np.float64)
    p, pnt = {"N": N, "B": B, "T": T}, {"N": N, "T": T}
    g = greedy(lm, T, bos=0)[0].stats
    ex = exhaustive_search(lm, T, bos=0, top=N ** T)
    table, terms = cd.naive_enumeration(lm, T, bos=0)
    hyp = beam_search(lm, B, T, bos=0, trace=True)
    st = hyp[0].stats
    sort_count = heap_count = widest = 0
    for step in st.trace:
        scores = [c[2] for c in step["candidates"]]
        widest = max(widest, len(scores))
        sort_count += cd.counted_merge_sort(scores)[1]
        heap_count += cd.counted_heap_topk(scores, min(B, len(scores)))[1]
    plm = cd.PrefixCountingLM(N, seed=1)
    beam_search(plm, B, T, bos=0)
    big = {"N": 20000, "T": 10}
    tb = cd.full_table_terabytes(20000, 10)
    return [
        _row("decode", "greedy: candidates scored", "T·N", pnt, cd.greedy_candidates(N, T),
             g.candidates_scored),
        _row("decode", "exhaustive: sequences", "N^T", pnt, cx.exhaustive_sequences(N, T),
             len(ex), "N^T"),
        _row("decode", "exhaustive, level by level: log-probabilities scored",
             "N + N² + … + N^T", pnt, cx.exhaustive_scores(N, T), ex[0].stats.candidates_scored),
        _row("decode", "exhaustive, each sequence alone: terms summed", "T·N^T", pnt,
             cd.exhaustive_terms(N, T), terms, "O(T·N^T)"),
        _row("decode", "full table of float64 probabilities: bytes", "8·N^T", pnt,
             cd.full_table_bytes(N, T), table.nbytes),
        _row("decode", "sequences for the course's vocabulary", "N^T", big,
             cx.exhaustive_sequences(20000, 10), None, "20000^10 ≈ 10^43"),
        _row("decode", f"full table of float64 probabilities: bytes (= {float(tb):.4g} TB)",
             "8·N^T", big, cd.full_table_bytes(20000, 10), None, "≈ 8^21 TB"),
        _row("decode", "beam search: candidates scored", "Σ_t B_t·N <= T·B·N", p,
             cx.beam_candidates(B, N, T), st.candidates_scored, "O(T·B·N)"),
        _row("decode", "beam search, sorting every step: comparisons (worst case)",
             "Σ_t n_t⌈log2 n_t⌉ − 2^⌈log2 n_t⌉ + 1", p,
             cd.beam_sort_comparisons_bound(B, N, T), sort_count, None, "<="),
        _row("decode", "beam search, sorting every step: the course's cost", "T·B·N·log2(B·N)",
             p, cd.beam_sort_cost(B, N, T), sort_count, "O(T·B·N·log(B·N))", "<="),
        _row("decode", "beam search, heap of size B: comparisons (worst case)",
             "Σ_t 2k + (n_t−k)(1+2⌊log2 k⌋) + 2k⌊log2 k⌋ = O(T·B·N·log k), k = B", p,
             cd.beam_heap_comparisons_bound(B, N, T), heap_count, None, "<="),
        _row("decode", "beam search: sequences the model runs on", "Σ_t B_t <= T·B", p,
             cd.beam_lm_rows(B, N, T), sum(rows for rows, _ in plm.calls), "T·B inferences"),
        _row("decode", "beam search: attention scores, whole prefix every step",
             "Σ_t B_t·t² <= B·T³", p, cd.beam_attention_entries(B, N, T),
             plm.attention_entries(), "O(B·T³)"),
        _row("decode", "beam search: attention scores with a key/value cache",
             "Σ_t B_t·t <= B·T²", p, cd.beam_attention_entries(B, N, T, cache=True),
             plm.attention_entries(cache=True)),
        _row("decode", "beam search: tokens held with backpointers", "Σ_t B_(t+1) <= B·T", p,
             cx.beam_backpointer_tokens(B, N, T), st.hypothesis_tokens, "O(B·T)"),
        _row("decode", "beam search: tokens moved copying prefixes", "Σ_t B_(t+1)·t <= B·T²", p,
             cx.beam_prefix_copy_tokens(B, N, T), st.prefix_copy_tokens, "O(B·T²)"),
        _row("decode", "beam search: peak numbers held (hypotheses + one step's scores)",
             "Σ_t B_(t+1) + max_t B_t·N <= B·(T + N)", p, cd.beam_space_elements(B, N, T),
             st.hypothesis_tokens + widest, "O(B·(T + N))"),
        _row("decode", "one step's float32 scores: bytes, the course's example", "4·B·N",
             {"N": 500000, "B": 100}, 4 * 100 * 500000, None,
             "50,000,000 × 4 bytes = 200MB"),
    ]


# ---------------------------------------------------------------- BiRNN

def _birnn_rows(s) -> list:
    from fastdl._backends.numpy import rnn as ref
    from fastdl.rnn import BiRNNParams, birnn_backward, birnn_forward
    from fastdl.testing import count_matmuls
    T, B, I, H, O = (s[k] for k in ("T", "B", "d_in", "hidden", "d_out"))
    rng = np.random.default_rng(0)
    p = BiRNNParams.init(I, H, O, rng=rng, dtype=np.float64)
    x = rng.standard_normal((T, B, I))
    w = (p.W_f, p.U_f, p.V_f, p.W_b, p.U_b, p.V_b)
    fwd, (_, h_f, h_b) = count_matmuls(ref.birnn_fwd, x, *w, None, None, None, None, None, None)
    dy = rng.standard_normal((T, B, O))
    bwd, _ = count_matmuls(ref.birnn_bwd, dy, x, np.asarray(h_f).view(np.ndarray),
                      np.asarray(h_b).view(np.ndarray), *w, None, None, None, True)
    y, cache = birnn_forward(x, p, backend="numpy")
    kept = y.nbytes + cache.h_f.nbytes + cache.h_b.nbytes
    grads = birnn_backward(cache, np.ones_like(y), need_dx=True)
    returned = sum(a.nbytes for a in grads.as_dict().values())
    workspace = 8 * 2 * T * B * H            # both directions' δ: allocated inside, not returned
    prm = {"T": T, "B": B, "d_in": I, "hidden": H, "d_out": O}
    return [
        _row("birnn", "forward multiply-adds", "2·T·B·(d_in·h + h² + h·d_out)", prm,
             cx.birnn_forward_macs(T, B, I, H, O), fwd),
        _row("birnn", "backward multiply-adds", "2·T·B·(2·d_out·h + 2·h² + 2·h·d_in)", prm,
             cx.birnn_backward_macs(T, B, I, H, O), bwd),
        _row("birnn", "forward bytes kept (float64)", "8·T·B·(d_out + 2h)", prm,
             cx.birnn_forward_bytes(T, B, I, H, O, itemsize=8), kept),
        _row("birnn", "backward bytes returned: the gradients (float64)",
             "8·(2h(d_in + h + d_out) + 2Bh + T·B·d_in)", prm,
             cx.birnn_backward_bytes(T, B, I, H, O, itemsize=8) - workspace, returned),
    ]


# ---------------------------------------------------------------- LoRA / QLoRA

def _lora_rows(s) -> list:
    from fastdl.lora import TransformerLayer, count_ops
    n, d, h, r = s["n"], s["d"], s["h"], s["r"]
    prm = {"n": n, "d": d, "h": h, "r": r}
    H = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    lay = TransformerLayer(d, h, r, rng=0, quantize={"mha": "nf4", "ffn": "nf4"})
    runs = {}
    for stage in ("mha", "ffn"):
        with count_ops() as c:
            lay.forward(H, stage=stage)
        runs[stage] = c
    with count_ops() as c:
        lay.backward(lay.forward(H))
    runs["layer"] = c
    plain = TransformerLayer(d, h, r, rng=0)
    only = {st: TransformerLayer(d, h, r, rng=0, lora_targets=t).trainable_parameters()
            for st, t in (("mha", ("q", "k", "v")), ("ffn", ("f",)))}
    ffn, mha = cx.lora_ffn_macs(n, d, r), cx.lora_mha_macs(n, d, h, r)
    f_run, m_run = runs["ffn"]["forward"], runs["mha"]["forward"]
    macs = lambda run: sum(run.get(k, 0) for k in cx.LoRAForwardCounts.MAC_FIELDS)  # noqa: E731
    bwd = cx.lora_backward_macs(n, d, h, r)
    nf4 = {"bits": 4, "block_size": 64, "double_quant": True}
    return [
        _row("lora", "LFFN forward multiply-adds", "n·d² + 2·n·d·r", prm, ffn.total,
             macs(f_run), "O(nd² + ndr)"),
        _row("lora", "LFFN adapter multiply-adds", "2·n·d·r", prm, ffn.adapter,
             f_run.get("adapter", 0), "O(ndr)"),
        _row("lora", "MHA forward multiply-adds", "4·h·n·d² + 6·h·n·d·r + 2·h·n²·d",
             prm, mha.total, macs(m_run), "O(hnd² + ndr + hn²d)"),
        _row("lora", "MHA adapter multiply-adds (per head)", "6·h·n·d·r", prm, mha.adapter,
             m_run.get("adapter", 0), "O(ndr)"),
        _row("lora", "layer backward multiply-adds", "see LoRABackwardCounts", prm, bwd.total,
             sum(runs["layer"]["backward"].get(k, 0) for k in cx.LoRABackwardCounts.MAC_FIELDS)),
        _row("lora", "LFFN trainable parameters", "2·d·r", prm,
             cx.lora_trainable_params(d, h, r, stage="ffn"), only["ffn"], "O(2dr)"),
        _row("lora", "MHA trainable parameters", "6·h·d·r", prm,
             cx.lora_trainable_params(d, h, r, stage="mha"), only["mha"], "O(6hdr)"),
        _row("lora", "QLoRA LFFN weights dequantized per forward", "d²", prm,
             cx.qlora_dequant_elements(d, h, stage="ffn"),
             runs["ffn"]["dequantized"]["forward"], "O(d²)"),
        _row("lora", "QLoRA MHA weights dequantized per forward", "3·h·d² + h·d·d", prm,
             cx.qlora_dequant_elements(d, h, stage="mha"),
             runs["mha"]["dequantized"]["forward"], "O(4d²) = O(d²)"),
        _row("lora", "LoRA LFFN frozen-weight bits (float32)", "32·d²", prm,
             cx.frozen_weight_bits(d, h, stage="ffn"), 8 * plain.frozen_bytes("ffn")),
        _row("lora", "LoRA MHA frozen-weight bits (float32)", "32·4·h·d²", prm,
             cx.frozen_weight_bits(d, h, stage="mha"), 8 * plain.frozen_bytes("mha")),
        _row("lora", "QLoRA LFFN frozen-weight bits (NF4, blocks of 64)", "4·d² + scales", prm,
             cx.frozen_weight_bits(d, h, stage="ffn", quant=nf4), 8 * lay.frozen_bytes("ffn")),
        _row("lora", "QLoRA MHA frozen-weight bits (NF4, blocks of 64)", "4·4·h·d² + scales",
             prm, cx.frozen_weight_bits(d, h, stage="mha", quant=nf4),
             8 * lay.frozen_bytes("mha")),
    ]


def report(shapes=None) -> list:
    """Every formula's row (see the module docstring), each ``counted`` from a run of the
    library on ``shapes`` (default ``DEFAULT_SHAPES``; a dict overrides any of its
    entries, e.g. ``{"decode": {"B": 4}}``).  Deterministic; well under a second."""
    s = _shapes(shapes)
    return _norm_rows(s["norm"]) + _decode_rows(s["decode"]) + _birnn_rows(s["birnn"]) + \
        _lora_rows(s["lora"])
