"""The document's formulas (fastdl.complexity) against counts the searches measure."""
import pytest

from fastdl import complexity
from fastdl.decode import beam_search, exhaustive_search, greedy
from fastdl.decode.examples import SyntheticLM


@pytest.mark.parametrize("B,N,T", [(1, 7, 5), (2, 3, 4), (4, 3, 4), (9, 3, 4), (8, 50, 6),
                                   (27, 3, 3), (100, 5, 3)])
def test_beam_counts_match_the_formulas(B, N, T):
    st = beam_search(SyntheticLM(N, seed=B), B, T, bos=0)[0].stats
    assert st.candidates_scored == complexity.beam_candidates(B, N, T)
    assert st.hypothesis_tokens == complexity.beam_backpointer_tokens(B, N, T)
    assert st.prefix_copy_tokens == complexity.beam_prefix_copy_tokens(B, N, T)
    assert st.lm_calls == st.steps == T


def test_backpointers_grow_linearly_and_copies_quadratically():
    b = [complexity.beam_backpointer_tokens(8, 1000, T) for T in (16, 32, 64)]
    c = [complexity.beam_prefix_copy_tokens(8, 1000, T) for T in (16, 32, 64)]
    assert b == [128, 256, 512]
    assert c == [8 * 16 * 17 // 2, 8 * 32 * 33 // 2, 8 * 64 * 65 // 2]


def test_greedy_scores_T_times_N():
    st = greedy(SyntheticLM(11), 6, bos=0)[0].stats
    assert st.candidates_scored == 6 * 11 == complexity.beam_candidates(1, 11, 6)


@pytest.mark.parametrize("N,T", [(2, 5), (4, 3), (6, 4)])
def test_exhaustive_scores_every_prefix_extension(N, T):
    st = exhaustive_search(SyntheticLM(N), T, bos=0)[0].stats
    assert st.candidates_scored == complexity.exhaustive_scores(N, T)
    assert complexity.exhaustive_sequences(N, T) == N ** T
