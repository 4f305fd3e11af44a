"""Analytic operation counts of the decoding searches as exact functions, for the
tests, the benchmarks and ``fastdl demo`` to compare with the counts the searches
measure.  Notation: N tokens in the vocabulary, T steps, beam width B.
"""
from __future__ import annotations

__all__ = ["exhaustive_sequences", "exhaustive_scores", "beam_candidates",
           "beam_backpointer_tokens", "beam_prefix_copy_tokens"]


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
