"""Where the course's worked answers are loose or wrong, each with the corrected value
computed by the library.  ``ERRATA`` is data: ``fastdl demo`` prints it, the tests
check every ``value()`` against an independent computation.

Each entry: ``key``; ``where`` (the question and part, in words); ``course`` (what the
course states); ``corrected`` (a format string over ``v``, the computed value);
``compute`` (a function of nothing returning ``v``)."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from fastdl import demo_course as C


@dataclass(frozen=True)
class Erratum:
    key: str
    where: str
    course: str
    corrected: str
    compute: Callable[[], object]

    def value(self):
        return self.compute()

    def text(self) -> str:
        return self.corrected.format(v=self.value())


# ---------------------------------------------------------------- normalization

def batch_mean_channel_2() -> dict:
    import fastdl
    mu = float(fastdl.norm_stats(C.NORM_X, "batch")[0][1])
    return {"value": mu, "fraction": Fraction(mu).limit_denominator(1000)}


def instance_var_second_sample() -> dict:
    """σ² of sample 2, channel 1 by the library, and the course's written expression
    (which subtracts sample 1's mean 2.667) evaluated as written."""
    import fastdl
    mean, var = fastdl.norm_stats(C.NORM_X, "instance")
    row = C.NORM_X[1, 0]
    as_written = float(np.mean((row - round(float(mean[0, 0]), 3)) ** 2))
    return {"value": float(var[1, 0]), "mean": float(mean[1, 0]), "as_written": as_written}


# ---------------------------------------------------------------- decoding

def probability_table_tb() -> dict:
    """Bytes of every joint probability of 20 000^10 sequences at 8 bytes, in TB (10^12)."""
    from fastdl import complexity
    count = complexity.exhaustive_sequences(C.TABLE_N, C.TABLE_T)
    tb = Fraction(count * C.TABLE_ITEMSIZE, 10 ** 12)
    return {"count": count, "tb_exact": tb, "tb": float(tb), "course_tb": C.TABLE_TB,
            "ratio": float(tb) / C.TABLE_TB}


def _shapes():
    from fastdl.decode import examples
    return examples.shapes_lm()


def exhaustive_scored() -> dict:
    """Conditional log-probabilities an enumeration of the shapes tree scores (shared
    prefixes), beside T·N^T."""
    from fastdl import complexity
    from fastdl.decode import exhaustive_search
    lm, T = _shapes(), C.SHAPES_T
    st = exhaustive_search(lm, T, bos=lm.bos)[0].stats
    N = lm.vocab_size
    return {"measured": st.candidates_scored, "formula": complexity.exhaustive_scores(N, T),
            "T_N_T": T * N ** T, "N": N, "T": T}


def selection_cost() -> dict:
    """Comparisons per step to pick the best B of B·N scores: a full sort,
    B·N·log2(B·N), against a size-B heap, B·N·log2(B), at the course's 500 000 words
    and beam 100."""
    from fastdl.demo_decode import selection_comparisons
    B, N = C.SPACE_B, C.SPACE_N
    return {**selection_comparisons(B, N), "B": B, "N": N}


def beam_tokens() -> dict:
    """Tokens a beam search of width 2 over the shapes tree stores with backpointers
    (measured) and what copying prefixes moves (the formula, Σ_t B_t·t)."""
    from fastdl import complexity
    from fastdl.decode import beam_search
    lm, T, B = _shapes(), C.SHAPES_T, C.BEAM_WIDTH
    st = beam_search(lm, B, T, bos=lm.bos)[0].stats
    N = lm.vocab_size
    return {"backpointers": st.hypothesis_tokens, "copies": st.prefix_copy_tokens,
            "copies_formula": complexity.beam_prefix_copy_tokens(B, N, T),
            "course_assign": sum(range(1, T + 1)), "B": B, "T": T}


def beam_space_mb() -> dict:
    """The B·N score table of the course's space example at 4 and at 8 bytes, in MB."""
    cells = C.SPACE_B * C.SPACE_N
    return {"float32": cells * 4 / 1e6, "float64": cells * 8 / 1e6}


def greedy_log_prob() -> float:
    """Σ_t log p(w̄_t | w̄_<t) along greedy's path, read off the tree's conditionals."""
    from fastdl.decode import greedy
    lm = _shapes()
    return float(greedy(lm, C.SHAPES_T, bos=lm.bos)[0].log_prob)


def beam_below_greedy() -> dict:
    from fastdl.decode import beam_search, exact_search, greedy
    lm, T = _shapes(), C.SHAPES_T
    return {"beam": float(beam_search(lm, C.BEAM_WIDTH, T, bos=lm.bos)[0].log_prob),
            "greedy": float(greedy(lm, T, bos=lm.bos)[0].log_prob),
            "exact": float(exact_search(lm, T, bos=lm.bos)[0].log_prob)}


# ---------------------------------------------------------------- bidirectional RNN

def backward_jacobian() -> dict:
    """∂h_1^(b)/∂h_2^(b) of the demo's T = 3 example: the library's, by central finite
    differences of one backward step, and the course's written form (with h_3^(b))."""
    from fastdl import demo_rnn
    return demo_rnn.backward_jacobian_check()


def hidden_gradient_layout() -> dict:
    from fastdl import demo_rnn
    return demo_rnn.local_gradient_check()


def weight_gradient_order() -> dict:
    from fastdl import demo_rnn
    return demo_rnn.weight_gradient_check()


# ---------------------------------------------------------------- LoRA / QLoRA

def _shape():
    from fastdl import demo_lora
    s = demo_lora.COUNT_SHAPE
    return s["n"], s["d"], s["h"], s["r"]


def mha_projection_macs() -> dict:
    from fastdl import complexity
    n, d, h, r = _shape()
    m = complexity.lora_mha_macs(n, d, h, r)
    return {"base": m.base, "adapter": m.adapter, "course_base": 3 * n * d * d,
            "course_adapter": n * d * r, "n": n, "d": d, "h": h, "r": r}


def mha_dequant() -> dict:
    from fastdl import complexity
    n, d, h, r = _shape()
    return {"value": complexity.qlora_dequant_elements(d, h, stage="mha"),
            "course": 4 * d * d, "d": d, "h": h}


def floor_rounding_error() -> dict:
    """Largest |W - dequant(quant(W))| / Δ of 8-bit absmax per tensor with floor and
    with round-to-nearest, on a random 64×64 weight."""
    from fastdl.quant import quantize
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    out = {}
    for rounding in ("floor", "nearest"):
        q = quantize(w, 8, block_size=None, rounding=rounding)
        delta = float(np.abs(w).max()) / 127
        out[rounding] = float(np.abs(q.dequantize() - w).max()) / delta
    return out


def _e(*args) -> Erratum:
    return Erratum(*args)


ERRATA = [
    _e("batch_mean_2", "Normalization, batch norm of the 4×2×3 tensor: mean of channel 2",
       "μ₂ = 2.916 (also used in σ₂²)",
       "μ₂ = {v[fraction]} = {v[value]:.4f}, 2.917 to three decimals (2.916 is truncated); "
       "σ₂² = 1.243 is right", batch_mean_channel_2),
    _e("instance_var_2", "Normalization, instance norm: variance of sample 2, channel 1",
       "σ² = 1/3((1 − 2.667)² + (2 − 2.667)² + (4 − 2.667)²) = 1.556",
       "the expression must subtract this instance's mean {v[mean]:.3f}, not sample 1's 2.667 "
       "(as written it is {v[as_written]:.3f}); the value {v[value]:.3f} = 14/9 is right",
       instance_var_second_sample),
    _e("table_memory", "Decoding, exhaustive search: memory for every joint probability of "
       "a 20 000-word vocabulary over 10 steps at 8 bytes each",
       "20000^10 ≈ 10^43 probabilities, ≈ 8^21 TB",
       "{v[count]:.4g} probabilities × 8 bytes = {v[tb]:.4g} TB ≈ 8·10^31 TB, "
       "{v[ratio]:.1e} times the stated 8^21 ≈ 9.2·10^18 TB", probability_table_tb),
    _e("exhaustive_time", "Decoding, exhaustive search: time to score every sequence",
       "O(T·N^T)",
       "scored level by level, shared prefixes need Σ_t N^t = N(N^T − 1)/(N − 1) "
       "conditionals, O(N^T): {v[measured]} measured on the shapes tree (N = {v[N]}, "
       "T = {v[T]}) against T·N^T = {v[T_N_T]}; T·N^T holds only if each sequence is "
       "rescored from scratch", exhaustive_scored),
    _e("beam_sort", "Decoding, beam search time: choosing the B best of the B·N scores",
       "sorting: O(B·N·log(B·N)) per step, O(T·B·N·log(B·N)) in all",
       "a size-B heap (or a partial selection) suffices: O(B·N·log B) per step, "
       "O(T·B·N·log B) in all; at N = {v[N]:,}, B = {v[B]} per step {v[heap]:.3g} "
       "comparisons instead of {v[sort]:.3g}", selection_cost),
    _e("beam_prefixes", "Decoding, beam search time and space: saving and assigning the "
       "partial sequences",
       "saving: O(T) per beam, O(B·T²); assigning: O(T) per step, O(T²)",
       "with backpointers each step stores one token per beam: O(B·T) in all "
       "({v[backpointers]} tokens measured on the shapes tree, B = {v[B]}, T = {v[T]}); "
       "copying prefixes instead moves B·t tokens at step t, Σ_t B·t = {v[copies_formula]} "
       "= O(B·T²), so the assignment is O(B·T²), not O(T²) = {v[course_assign]}", beam_tokens),
    _e("beam_space", "Decoding, beam search space example: 500 000 words, beam 100",
       "50 000 000 × 4 bytes = 200 MB",
       "{v[float32]:.0f} MB holds for 4-byte scores; with the 8-byte floats assumed for "
       "exhaustive search it is {v[float64]:.0f} MB (plus the B·T tokens)", beam_space_mb),
    _e("greedy_formula", "Decoding, greedy on the shapes tree: the log-likelihood",
       "log p(w̄_{1:3}) = log ∏ p(w̄_{0:i}) = −9.7",
       "log p(w̄_{{1:3}}) = Σ_i log p(w̄_i | w̄_{{0:i−1}}) = {v:.1f} (conditionals, not joint "
       "probabilities of prefixes; the value is right)", greedy_log_prob),
    _e("beam_vs_greedy", "Decoding, limitations of greedy and beam search",
       "beam search is more exhaustive than greedy; greedy stalls in local minima",
       "a wider beam is no guarantee: on this very tree beam search (B = 2) ends at "
       "{v[beam]:.1f} while greedy (B = 1) finds {v[greedy]:.1f}, the optimum by exact "
       "search ({v[exact]:.1f}); the likelihood is maximized, so local maxima",
       beam_below_greedy),
    _e("birnn_jacobian", "Bidirectional RNN, derivative of the backward direction's state",
       "(∂h_{t+1}(b)/∂h_t(b))_ij = (1 − (h_{t+1}(b))_i²) U(b)_ij",
       "the term in the recursion is ∂h_{{t−1}}(b)/∂h_t(b) = diag(1 − h_{{t−1}}(b)²) U(b) (as the "
       "course's Jacobian part has it); ∂h_{{t+1}}(b)/∂h_t(b) = 0 since h_{{t+1}}(b) is computed "
       "first. Checked at t = 2: library vs finite differences {v[error]:.1e}; the form "
       "with h_{{t+1}} is off by {v[written_error]:.2f}", backward_jacobian),
    _e("birnn_local_grad", "Bidirectional RNN, gradient of L_t with respect to the states",
       "∇h_t(f) L_t = −2(z_t − y_t)ᵀ V(f) (a row vector)",
       "as a gradient (a column, the shape of h_t) −2 V(f)ᵀ(z_t − y_t), likewise with V(b); "
       "library vs finite differences {v[error]:.1e}", hidden_gradient_layout),
    _e("birnn_weight_grad", "Bidirectional RNN, gradients of W(b), U(b), W(f), U(f)",
       "∇W(b) L = Σ_t ∇h_t(b) L · diag(1 − h_t(b)²) x_tᵀ",
       "Σ_t (diag(1 − h_t(b)²) ∇h_t(b) L) x_tᵀ: the column diag(·)∇ times the row x_tᵀ; "
       "∇U(b) L uses h_{{t+1}}(b), the initial state at t = T. Term-by-term sums vs the "
       "library's backward {v[vs_backward]:.1e}, vs finite differences {v[vs_fd]:.1e} "
       "(relative)", weight_gradient_order),
    _e("mha_adapters", "LoRA / QLoRA time in multi-head attention: the Q, K, V projections "
       "and their adapters",
       "3·O(nd²) = O(nd²) and 3·(O(ndr) + O(nrd)) = O(ndr); total O(hnd² + ndr + hn²d)",
       "every head has its own W and A, B: 3·h·n·d² = {v[base]:,} base and 6·h·n·d·r = "
       "{v[adapter]:,} adapter multiply-adds at n = {v[n]}, d = {v[d]}, h = {v[h]}, r = {v[r]} "
       "(not {v[course_base]:,} and {v[course_adapter]:,}); total O(hnd² + hndr + hn²d), "
       "for QLoRA too", mha_projection_macs),
    _e("mha_dequant", "QLoRA time in multi-head attention: dequantizing the frozen weights",
       "W^Q, W^K, W^V, W^O: O(4d²) = O(d²)",
       "3h·d² + dh·d = 4·h·d² weights per forward (every head's W^Q, W^K, W^V and the "
       "dh × d W^O): {v[value]:,} at d = {v[d]}, h = {v[h]}, not 4d² = {v[course]:,}",
       mha_dequant),
    _e("quant_floor", "QLoRA, the quantization formula of the question",
       "W̃ = ⌊W/Δ⌋, Δ = max|W| / (2^(m−1) − 1)",
       "⌊·⌋ rounds toward −∞, so the dequantization error reaches {v[floor]:.3f}·Δ; "
       "rounding to nearest bounds it by Δ/2 ({v[nearest]:.3f}·Δ measured, 8 bits)",
       floor_rounding_error),
]

BY_KEY = {e.key: e for e in ERRATA}
