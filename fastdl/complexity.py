"""Analytic operation counts as exact functions, for the tests, the benchmarks and
``fastdl demo`` to compare with the counts the code measures.

Decoding searches: N tokens in the vocabulary, T steps, beam width B.
Bidirectional RNN: T steps, B sequences, d_in inputs, hidden units, d_out outputs;
``lengths`` the real lengths of a padded batch (None: every sequence has T steps).
The byte counts are of what a forward or a backward must produce and keep, at
``itemsize`` bytes per number (4: float32); inputs (x, dy, the parameters) are
not counted.

Also here, from their own modules: the normalization statistics
(``fastdl.complexity_norm``), greedy / brute-force / beam-selection / memory counts
of decoding (``fastdl.complexity_decode``), LoRA / QLoRA in the transformer layer
(``fastdl.complexity_lora``), and ``report``, the table of every formula beside an
instrumented run (``fastdl.complexity_report``).
"""
from __future__ import annotations

import numbers

from fastdl.complexity_decode import (PrefixCountingLM, beam_attention_entries,
                                      beam_heap_comparisons_bound, beam_lm_rows, beam_heap_cost,
                                      beam_sort_comparisons_bound, beam_sort_cost,
                                      beam_space_elements, beam_step_candidates,
                                      counted_heap_topk, counted_merge_sort, exhaustive_terms,
                                      full_table_bytes, full_table_terabytes, greedy_candidates,
                                      heap_topk_comparisons_bound, merge_sort_comparisons_bound,
                                      naive_enumeration)

from fastdl.complexity_lora import (LORA_TARGETS, LoRABackwardCounts, LoRAForwardCounts,
                                    document_terms, frozen_weight_bits, frozen_weight_elements,
                                    lora_backward_macs, lora_ffn_macs, lora_layer_macs,
                                    lora_linear_backward_macs, lora_linear_macs, lora_mha_macs,
                                    lora_table, lora_trainable_params, qlora_dequant_elements)
from fastdl.complexity_norm import (NORM_STAT_KINDS, measure_norm_stats, norm_elements_read,
                                    norm_elements_per_statistic, norm_statistics)

__all__ = ["exhaustive_sequences", "exhaustive_scores", "beam_candidates",
           "beam_backpointer_tokens", "beam_prefix_copy_tokens", "birnn_steps",
           "birnn_forward_macs", "birnn_backward_macs", "birnn_forward_bytes",
           "birnn_backward_bytes",
           # LoRA / QLoRA in the transformer layer (fastdl.complexity_lora)
           "LORA_TARGETS", "LoRAForwardCounts", "LoRABackwardCounts", "lora_linear_macs",
           "lora_linear_backward_macs", "lora_ffn_macs", "lora_mha_macs", "lora_layer_macs",
           "lora_backward_macs", "lora_trainable_params", "frozen_weight_elements",
           "qlora_dequant_elements", "frozen_weight_bits", "document_terms", "lora_table",
           # decoding (fastdl.complexity_decode)
           "greedy_candidates", "exhaustive_terms", "beam_step_candidates",
           "merge_sort_comparisons_bound", "beam_sort_comparisons_bound", "beam_sort_cost",
           "heap_topk_comparisons_bound", "beam_heap_comparisons_bound", "beam_heap_cost",
           "beam_space_elements", "full_table_bytes", "full_table_terabytes",
           "beam_lm_rows", "beam_attention_entries", "PrefixCountingLM",
           "counted_merge_sort", "counted_heap_topk", "naive_enumeration",
           # normalization (fastdl.complexity_norm)
           "NORM_STAT_KINDS", "norm_elements_per_statistic", "norm_statistics",
           "norm_elements_read", "measure_norm_stats",
           "report"]


def report(shapes=None) -> list:
    """Every formula of this module beside the count of an instrumented run of the
    library on small shapes: a list of dicts with "area", "quantity", "formula",
    "params", "analytic", "counted", "relation" ("==", or "<=" for worst-case bounds)
    and "document" (the course's value or expression, or None).  See
    ``fastdl.complexity_report.report``."""
    from fastdl.complexity_report import report as _report    # it imports the library
    return _report(shapes)


def exhaustive_sequences(N: int, T: int) -> int:
    """Sequences of T tokens after ⟨BOS⟩: N^T."""
    return N ** T


def exhaustive_scores(N: int, T: int) -> int:
    """Conditional log-probabilities scored by level-by-level enumeration:
    Σ_{t=1..T} N^t (at most T·N^T, the usual O(T·N^T) bound)."""
    return sum(N ** t for t in range(1, T + 1))


def _beams(B: int, N: int, t: int) -> int:
    """Live beams entering step t when the first step expands one ⟨BOS⟩ (no eos)."""
    return min(B, N ** (t - 1))


def beam_candidates(B: int, N: int, T: int) -> int:
    """Σ_t B_t·N candidates scored by beam search without eos: the O(T·B·N)
    term, exact (step 1 scores N, not B·N, since beams are not duplicated)."""
    return sum(_beams(B, N, t) * N for t in range(1, T + 1))


def beam_backpointer_tokens(B: int, N: int, T: int) -> int:
    """Tokens stored with backpointers: one per live hypothesis per step, O(B·T)."""
    return sum(_beams(B, N, t + 1) for t in range(1, T + 1))


def beam_prefix_copy_tokens(B: int, N: int, T: int) -> int:
    """Tokens moved by a beam search that copies each kept prefix every step:
    Σ_t B_t·t, O(B·T²)."""
    return sum(_beams(B, N, t + 1) * t for t in range(1, T + 1))


def birnn_steps(T: int, B: int, lengths=None) -> int:
    """Real (sequence, step) pairs: T·B, or Σ lengths for a padded batch (padding
    costs nothing: the kernels work on the real steps only, as torch's packed
    sequences do)."""
    return T * B if lengths is None else int(sum(int(n) for n in lengths))


def birnn_forward_macs(T: int, B: int, d_in: int, hidden: int, d_out: int, *,
                       lengths=None) -> int:
    """Multiply-adds of the forward of both directions: per real step and direction
    W x_t (d_in·hidden), U h (hidden²) and V h (hidden·d_out)."""
    n = birnn_steps(T, B, lengths)
    return 2 * n * (d_in * hidden + hidden * hidden + hidden * d_out)


def birnn_backward_macs(T: int, B: int, d_in: int, hidden: int, d_out: int, *,
                        lengths=None, need_dx: bool = True) -> int:
    """Multiply-adds of the backward of both directions: per real step and direction
    Vᵀ dy (d_out·hidden), the recursion's Uᵀ δ (hidden²), ∇W (hidden·d_in),
    ∇U (hidden²), ∇V (d_out·hidden) and, with need_dx, Wᵀ δ (hidden·d_in)."""
    n = birnn_steps(T, B, lengths)
    per = 2 * d_out * hidden + 2 * hidden * hidden + hidden * d_in * (2 if need_dx else 1)
    return 2 * n * per


def _positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def _real_steps(T: int, B: int, lengths) -> int:
    """birnn_steps, after checking that lengths has B entries in [1, T]."""
    if lengths is not None:
        lens = [int(n) for n in lengths]
        if len(lens) != B:
            raise ValueError(f"lengths must have B={B} entries, got {len(lens)}")
        bad = [n for n in lens if not 1 <= n <= T]
        if bad:
            raise ValueError(f"lengths must be in [1, T={T}], got {bad[0]}")
    return birnn_steps(T, B, lengths)


def birnn_forward_bytes(T: int, B: int, d_in: int, hidden: int, d_out: int, *,
                        itemsize: int = 4, lengths=None) -> int:
    """Bytes the forward returns and keeps for the backward: y (T·B·d_out) and both
    directions' hidden states (2·T·B·hidden).  These are padded (T, B, ·) arrays,
    0 past each length, so ``lengths`` does not change the count.  Not counted:
    the pre-activations X·Wᵀ (they can be computed into the states' own arrays and
    the tanh applied in place), and the copies ``fastdl.rnn.birnn_forward`` makes so
    that its caller may change x and y afterwards (the cache's x, T·B·d_in, and the
    returned y beside the cache's)."""
    _positive(T=T, B=B, d_in=d_in, hidden=hidden, d_out=d_out, itemsize=itemsize)
    _real_steps(T, B, lengths)
    return itemsize * T * B * (d_out + 2 * hidden)


def birnn_backward_bytes(T: int, B: int, d_in: int, hidden: int, d_out: int, *,
                         itemsize: int = 4, lengths=None, need_dx: bool = True,
                         bias: bool = False) -> int:
    """Bytes the backward returns plus its least workspace.  Returned: the gradients of
    W, U and V of both directions (2·hidden·(d_in + hidden + d_out)), of the biases
    when the model has them (2·hidden + d_out), of both initial states (2·B·hidden)
    and, with need_dx, of x (T·B·d_in).  Workspace: both directions' pre-activation
    gradients δ_t over the real steps (2·Σ lengths·hidden), held together since the
    directions run side by side; Vᵀdy is computed into the same buffer."""
    _positive(T=T, B=B, d_in=d_in, hidden=hidden, d_out=d_out, itemsize=itemsize)
    n = _real_steps(T, B, lengths)
    grads = 2 * hidden * (d_in + hidden + d_out) + 2 * B * hidden
    if bias:
        grads += 2 * hidden + d_out
    if need_dx:
        grads += T * B * d_in
    return itemsize * (grads + 2 * n * hidden)
