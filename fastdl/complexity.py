"""Analytic operation counts as exact functions, for the tests, the benchmarks and
``fastdl demo`` to compare with the counts the code measures.

Decoding searches: N tokens in the vocabulary, T steps, beam width B.
Bidirectional RNN: T steps, B sequences, d_in inputs, hidden units, d_out outputs;
``lengths`` the real lengths of a padded batch (None: every sequence has T steps).
"""
from __future__ import annotations

__all__ = ["exhaustive_sequences", "exhaustive_scores", "beam_candidates",
           "beam_backpointer_tokens", "beam_prefix_copy_tokens", "birnn_steps",
           "birnn_forward_macs", "birnn_backward_macs"]


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
