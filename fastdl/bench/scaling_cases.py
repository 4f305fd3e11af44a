"""The declared scaling sweeps (``SWEEPS``): one per (area, variable).

Ranges are geometric, wide enough for a fit (a factor of 16 to 256), with the
largest point at tens of milliseconds.  The analytic exponent is that of the
dominant term of the operation's count over the swept range; the fixed sizes are
chosen so the other terms stay small there (the tests check the counted
operations' own slope against it).  All float32, default backend.
"""
from __future__ import annotations

import numpy as np

from fastdl import complexity
from fastdl.bench.scaling import Point, Sweep

__all__ = ["SWEEPS", "sweep_names"]

TOL = 0.25


# ---------------------------------------------------------------- decoding

def _search_point(N, B, T, *, greedy=False) -> Point:
    """beam_search (or greedy) on SyntheticLM: T steps, each scoring B_t·N candidates;
    the counted candidates are the search's own ``stats.candidates_scored``."""
    from fastdl.decode import beam_search
    from fastdl.decode import greedy as greedy_search
    from fastdl.decode.examples import SyntheticLM
    lm = SyntheticLM(N, table_rows=max(B, 8))
    if greedy:
        def thunk():
            return greedy_search(lm, T, bos=0)
    else:
        def thunk():
            return beam_search(lm, B, T, bos=0)
    stats = thunk()[0].stats
    # one step's logits, their log-probabilities and the top-k's pass over them
    return Point(thunk, int(stats.candidates_scored), 3 * 4 * B * N)


_SEARCH_WHY = ("every step scores B·N candidates (T·B·N in all, exact: "
               "complexity.beam_candidates); each candidate costs one LM logit, one "
               "log-softmax term and one top-k comparison, so time ∝ T·B·N")


def _decode_sweeps():
    # B·N >= 128k candidates per step at the smallest point: the fixed cost per step
    # (~0.15 ms: the Python loop, the LM call) stays under a third of the step
    N0, B0, T0 = 32768, 4, 4
    return [
        Sweep("beam_search/N", "decoding", "N", tuple(32768 << i for i in range(6)),
              (32768, 131072, 524288), 1.0, TOL,
              lambda N: _search_point(N, B0, T0), "candidates scored", _SEARCH_WHY, "search",
              fixed=f"B={B0}, T={T0}",
              formula=lambda N: complexity.beam_candidates(B0, N, T0),
              formula_name="complexity.beam_candidates(B, N, T)"),
        Sweep("beam_search/B", "decoding", "B", (4, 8, 16, 32, 64, 128), (4, 16, 64), 1.0, TOL,
              lambda B: _search_point(N0, B, T0), "candidates scored",
              _SEARCH_WHY + "; the first step scores N, not B·N (one ⟨BOS⟩), so the count's "
              "slope is a little under 1 at small B", "search",
              fixed=f"N={N0}, T={T0}",
              formula=lambda B: complexity.beam_candidates(B, N0, T0),
              formula_name="complexity.beam_candidates(B, N, T)"),
        Sweep("beam_search/T", "decoding", "T", (4, 8, 16, 32, 64, 128), (4, 16, 64), 1.0,
              TOL, lambda T: _search_point(8192, B0, T), "candidates scored",
              _SEARCH_WHY + "; backpointers keep the bookkeeping O(B·T) (no O(B·T²) prefix "
              "copies), so nothing grows faster than T", "search",
              fixed=f"N=8192, B={B0}",
              formula=lambda T: complexity.beam_candidates(B0, 8192, T),
              formula_name="complexity.beam_candidates(B, N, T)"),
        Sweep("greedy/N", "decoding", "N", tuple(262144 << i for i in range(6)),
              (262144, 1048576, 4194304), 1.0, TOL,
              lambda N: _search_point(N, 1, T0, greedy=True), "candidates scored",
              "greedy scores T·N candidates (one argmax over N per step)", "search",
              fixed=f"T={T0}", formula=lambda N: complexity.beam_candidates(1, N, T0),
              formula_name="greedy T·N (complexity.beam_candidates(1, N, T) until a "
                           "greedy formula exists)"),
        Sweep("greedy/T", "decoding", "T", (4, 8, 16, 32, 64, 128), (4, 16, 64), 1.0, TOL,
              lambda T: _search_point(65536, 1, T, greedy=True), "candidates scored",
              "greedy scores T·N candidates (one argmax over N per step)", "search",
              fixed="N=65536", formula=lambda T: complexity.beam_candidates(1, 65536, T),
              formula_name="greedy T·N (complexity.beam_candidates(1, N, T) until a "
                           "greedy formula exists)"),
    ]


# ---------------------------------------------------------------- LoRA transformer layer

def _lora_macs(n, d, h, r) -> int:
    return (complexity.lora_layer_macs(n, d, h, r).total
            + complexity.lora_backward_macs(n, d, h, r).total)


def _lora_point(n, d, h, r) -> Point:
    """TransformerLayer (adapters on q, k, v, f) forward then backward to every adapter
    and to H; the counted multiply-adds are the layer's own (``fastdl.lora.count_ops``)."""
    from fastdl.complexity import LoRABackwardCounts, LoRAForwardCounts
    from fastdl.lora import TransformerLayer, count_ops
    rng = np.random.default_rng(0)
    layer = TransformerLayer(d, h, r, rng=0, alpha=2 * r)
    for lay in layer.lora_layers().values():    # non-zero B: no product is trivially zero
        lay.params["B"][...] = rng.standard_normal(lay.params["B"].shape) / np.sqrt(r)
    H = rng.standard_normal((n, d), dtype=np.float32)
    dH = rng.standard_normal((n, d), dtype=np.float32)

    def thunk():
        layer.forward(H)
        return layer.backward(dH)
    with count_ops() as c:
        thunk()
    macs = (sum(c["forward"].get(k, 0) for k in LoRAForwardCounts.MAC_FIELDS)
            + sum(c["backward"].get(k, 0) for k in LoRABackwardCounts.MAC_FIELDS))
    wbytes = 4 * (4 * h + 1) * d * d
    return Point(thunk, int(macs), wbytes + 4 * n * d * 6)


_LORA_FORMULA = ("complexity.lora_layer_macs(n, d, h, r).total + "
                 "complexity.lora_backward_macs(n, d, h, r).total")


def _lora_sweeps():
    n0, d0, h0, r0 = 32, 512, 2, 8
    frozen = ("the frozen GEMMs dominate: (4h+1)·n·d² multiply-adds forward and again "
              "for dH backward")
    return [
        Sweep("lora/d", "LoRA", "d", (192, 256, 384, 512, 768, 1024, 1536), (192, 384, 768),
              2.0, 0.45, lambda d: _lora_point(n0, d, h0, r0), "multiply-adds",
              frozen + " → slope 2 in d (the adapters' and attention's terms are linear in "
                       "d: ~13 % of the count at d = 192, ~2 % at 1536, so the count's own "
                       "slope is 1.92).  Tolerance ±0.45: the products have n = 32 rows, "
                       "and their speed per multiply-add grows ~1.6-2.3× from d = 192 to "
                       "1536 (the fixed cost per call and per head is amortized, the GEMMs "
                       "get larger), which alone takes 0.2-0.4 off the fitted slope; the "
                       "upper half's slope is ~2", "gemm",
              fixed=f"n={n0}, h={h0}, r={r0}", formula=lambda d: _lora_macs(n0, d, h0, r0),
              formula_name=_LORA_FORMULA),
        Sweep("lora/n", "LoRA", "n", (48, 64, 96, 128, 192, 256, 384), (48, 96, 192), 1.0, 0.3,
              lambda n: _lora_point(n, 640, 1, r0), "multiply-adds",
              frozen + " → slope 1 in n while n ≪ d (attention's 6·h·n²·d, forward and "
                       "backward, grows faster: the count's own slope is ~1.12 here).  "
                       "Tolerance ±0.3: below n ≈ 64 rows the products are matrix-vector-like, "
                       "bound by reading the (4h+1)·d² frozen weights (n-independent), so "
                       "the range starts at 48 and the low end is still flatter; n = 8…64 fits "
                       "a slope near 0.5", "gemm",
              fixed=f"d=640, h=1, r={r0}", formula=lambda n: _lora_macs(n, 640, 1, r0),
              formula_name=_LORA_FORMULA),
        Sweep("lora/h", "LoRA", "h", (1, 2, 3, 4, 6, 8), (1, 2, 4), 1.0, TOL,
              lambda h: _lora_point(n0, d0, h, r0), "multiply-adds",
              frozen + ": (4h+1)·n·d² is affine in h, its slope over h = 1…8 is about 0.9 "
                       "(the FFN's n·d² is the constant part)", "gemm",
              fixed=f"n={n0}, d={d0}, r={r0}", formula=lambda h: _lora_macs(n0, d0, h, r0),
              formula_name=_LORA_FORMULA),
        Sweep("lora/r", "LoRA", "r", (1, 2, 4, 8, 16, 32, 64), (1, 4, 16), 0.0, TOL,
              lambda r: _lora_point(n0, d0, h0, r), "multiply-adds",
              frozen + "; the adapters add 4·(3h+1)·n·d·r, a few % of it for r ≪ d, so the "
                       "time barely depends on r (slope ~0; the counted multiply-adds' own "
                       "slope is under 0.1 here)", "gemm",
              fixed=f"n={n0}, d={d0}, h={h0}", formula=lambda r: _lora_macs(n0, d0, h0, r),
              formula_name=_LORA_FORMULA),
    ]


# ---------------------------------------------------------------- bidirectional RNN

def _rnn_macs(T, B, d) -> int:
    return (complexity.birnn_forward_macs(T, B, d, d, d)
            + complexity.birnn_backward_macs(T, B, d, d, d, need_dx=True))


def _rnn_point(T, B, d) -> Point:
    """birnn_forward then birnn_backward (dx too), d_in = hidden = d_out = d; the
    counted multiply-adds are the compiled kernels' own GEMM count when the backend
    reports it, else the analytic one."""
    from fastdl.rnn import BiRNNParams, birnn_backward, birnn_forward
    rng = np.random.default_rng(0)
    p = BiRNNParams.init(d, d, rng=rng)
    x = rng.standard_normal((T, B, d), dtype=np.float32)
    dy = rng.standard_normal((T, B, d), dtype=np.float32)

    def thunk():
        _, cache = birnn_forward(x, p)
        return birnn_backward(cache, dy)
    thunk()
    macs = _rnn_macs(T, B, d)
    try:
        from fastdl._backends.cython._rnn import last_macs
        counted = last_macs()
        if counted.get("birnn_fwd") and counted.get("birnn_bwd"):
            macs = counted["birnn_fwd"] + counted["birnn_bwd"]
    except ImportError:
        pass
    # weights (6 d²), x, dy, both directions' states and the gradients' workspace
    return Point(thunk, int(macs), 4 * (6 * d * d + T * B * d * 6))


def _rnn_sweeps():
    B0, d0 = 8, 128
    return [
        Sweep("birnn/T", "BiRNN", "T", (16, 32, 64, 128, 256, 512), (16, 64, 256), 1.0, TOL,
              lambda T: _rnn_point(T, B0, d0), "multiply-adds",
              "per step and direction the same products (W x_t, U h, V h forward; six "
              "backward): 2·T·B·(3d² forward + 6d² backward) multiply-adds, linear in T",
              "gemm", fixed=f"B={B0}, d={d0}", formula=lambda T: _rnn_macs(T, B0, d0),
              formula_name="complexity.birnn_forward_macs + complexity.birnn_backward_macs"),
        Sweep("birnn/d", "BiRNN", "d", (96, 128, 192, 256, 384, 512, 768), (96, 192, 384), 2.0,
              0.35, lambda d: _rnn_point(8, 16, d), "multiply-adds",
              "every product is d×d when d_in = hidden = d_out = d: 18·T·B·d² multiply-adds, "
              "slope 2.  Tolerance ±0.35: the per-step recurrence multiplies a B×d state by "
              "U (small GEMMs, far from compute-bound at small d) and the tanh is O(d), so "
              "the low end is flatter", "gemm", fixed="T=8, B=16",
              formula=lambda d: _rnn_macs(8, 16, d),
              formula_name="complexity.birnn_forward_macs + complexity.birnn_backward_macs"),
    ]


# ---------------------------------------------------------------- normalization

def _norm_point(kind, rows) -> Point:
    """layer_norm over the last 1024 features of (rows, 1024), or training batch_norm of
    (rows, 64, 16) over rows and the 16 positions per channel: every element read for
    the statistics and once more to normalize."""
    import fastdl
    rng = np.random.default_rng(0)
    if kind == "layer":
        x = rng.standard_normal((rows, 1024), dtype=np.float32)
        out = np.empty_like(x)

        def thunk():
            return fastdl.layer_norm(x, (1024,), out=out)
    else:
        x = rng.standard_normal((rows, 64, 16), dtype=np.float32)
        out = np.empty_like(x)

        def thunk():
            return fastdl.batch_norm(x, None, None, training=True, out=out)
    thunk()
    return Point(thunk, int(x.size), 2 * x.nbytes)


_NORM_WHY = ("every element is read for the statistics (mean and variance over its group) "
             "and normalized once: time ∝ elements (groups × elements per statistic).  "
             "Tolerance ±0.4: the range runs from cache-resident (input and output within "
             "the L2 and this process's share of the L3) to memory-resident; the time per "
             "element steps up ~3× where the working set passes ~16-32 MiB, which alone "
             "adds ~0.2 to a fit over a factor 128 (the regime note gives the slope on "
             "each side of the step, both near 1)")
NORM_TOL = 0.4


def _norm_elements(shape, kind) -> int:
    from fastdl import complexity
    return complexity.norm_elements_read(shape, kind)


def _norm_sweeps():
    rows = tuple(128 << i for i in range(8))
    return [
        Sweep("layer_norm/elements", "norms", "elements", tuple(r * 1024 for r in rows),
              (128 * 1024, 1024 * 1024, 8192 * 1024), 1.0, NORM_TOL,
              lambda n: _norm_point("layer", n // 1024), "elements", _NORM_WHY, "stream",
              fixed="rows × 1024 features",
              formula=lambda n: _norm_elements((n // 1024, 1024), "layer"),
              formula_name="complexity.norm_elements_read (statistics × elements per "
                           "statistic)"),
        Sweep("batch_norm/elements", "norms", "elements", tuple(r * 1024 for r in rows),
              (128 * 1024, 1024 * 1024, 8192 * 1024), 1.0, NORM_TOL,
              lambda n: _norm_point("batch", n // 1024), "elements", _NORM_WHY, "stream",
              fixed="(N, 64 channels, 16) training",
              formula=lambda n: _norm_elements((n // 1024, 64, 16), "batch"),
              formula_name="complexity.norm_elements_read (statistics × elements per "
                           "statistic)"),
    ]


SWEEPS = _decode_sweeps() + _lora_sweeps() + _rnn_sweeps() + _norm_sweeps()


def sweep_names() -> list[str]:
    return [s.name for s in SWEEPS]
