"""``fastdl demo``, decoding part: the course's counts for exhaustive, greedy and beam
search (exact, beside the course's answers), and greedy, beam and exact search on the
course's tree of shape descriptions with every candidate of every beam step."""
from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fastdl import complexity
from fastdl import demo_course as C
from fastdl.decode import beam_search, exact_search, examples, exhaustive_search, greedy

def selection_comparisons(B: int, N: int) -> dict:
    """Comparisons per step to choose the best B of B·N scores: sorting all of them,
    B·N·log2(B·N), or one pass with a size-B heap, B·N·log2(B)
    (``complexity.beam_sort_cost`` and ``beam_heap_cost`` of one step)."""
    return {"sort": complexity.beam_sort_cost(B, N, 1), "heap": complexity.beam_heap_cost(B, N, 1)}


def probability_table_bytes(N: int, T: int, itemsize: int = 8) -> int:
    """Bytes to store the joint probability of each of the N^T sequences."""
    return complexity.full_table_bytes(N, T, itemsize=itemsize)


def beam_space_numbers(B: int, N: int, T: int) -> int:
    """Numbers a beam search holds at once: the B·N scores of a step, B·T tokens
    (backpointers) and B log-likelihoods: O(B·(T + N))."""
    return B * N + B * T + B


def _ok(good, erratum: str | None = None) -> str:
    """✓ agrees; ≈ a valid but loose bound; ✗ wrong (with the correction's key)."""
    mark = {True: "✓", "loose": "≈", False: "✗"}[good]
    return f"{mark} see “{erratum}”" if erratum and good is not True else mark


def _loose(library_tighter: bool):
    """A course bound that holds but that the library's exact count shows to be loose."""
    return "loose" if library_tighter else False


def counts(console: Console) -> list:
    """The counts table; returns its rows (quantity, course, library, ok) for the tests."""
    lm = examples.shapes_lm()
    N, T, B = lm.vocab_size, C.SHAPES_T, C.BEAM_WIDTH
    ex = exhaustive_search(lm, T, bos=lm.bos)[0].stats
    g = greedy(lm, T, bos=lm.bos)[0].stats
    bm = beam_search(lm, B, T, bos=lm.bos)[0].stats
    tb = probability_table_bytes(C.TABLE_N, C.TABLE_T, C.TABLE_ITEMSIZE) / 1e12
    sel = selection_comparisons(C.SPACE_B, C.SPACE_N)
    space_mb = C.SPACE_B * C.SPACE_N * C.SPACE_ITEMSIZE / 1e6
    seqs = complexity.exhaustive_sequences(N, T)
    rows = [
        ("sequences of T tokens after ⟨BOS⟩", "N^T", f"N^T = {seqs}", True, None),
        ("exhaustive search: conditionals scored", "O(T·N^T)",
         f"{ex.candidates_scored} measured = Σ_t N^t = {complexity.exhaustive_scores(N, T)}"
         f" (T·N^T = {T * seqs})",
         _loose(ex.candidates_scored == complexity.exhaustive_scores(N, T)), "exhaustive_time"),
        ("20 000^10 joint probabilities × 8 bytes", "≈ 10^43, ≈ 8^21 TB",
         f"{complexity.exhaustive_sequences(C.TABLE_N, C.TABLE_T):.4g}, {tb:.4g} TB",
         math.isclose(tb, C.TABLE_TB, rel_tol=0.5), "table_memory"),
        ("greedy: candidates scored", "T·N", f"{g.candidates_scored} measured (T·N = {T * N})",
         g.candidates_scored == T * N, None),
        ("beam search: candidates scored", "O(T·B·N)",
         f"{bm.candidates_scored} measured = Σ_t B_t·N = "
         f"{complexity.beam_candidates(B, N, T)} (T·B·N = {T * B * N}: step 1 has one beam)",
         bm.candidates_scored == complexity.beam_candidates(B, N, T), None),
        (f"choose B best of B·N per step (N = {C.SPACE_N:,}, B = {C.SPACE_B})",
         "sort: B·N·log(B·N)", f"sort {sel['sort']:.3g}, heap B·N·log B {sel['heap']:.3g} "
         "comparisons", _loose(sel["heap"] < sel["sort"]), "beam_sort"),
        ("beam hypotheses stored", "O(B·T²) (prefix copies)",
         f"{bm.hypothesis_tokens} tokens measured (backpointers, B·T = {B * T}); copies "
         f"would move {bm.prefix_copy_tokens} (Σ_t B_t·t = "
         f"{complexity.beam_prefix_copy_tokens(B, N, T)})",
         # the course's O(B·T²) is what copying costs; backpointers need O(B·T)
         _loose(bm.hypothesis_tokens == B * T < bm.prefix_copy_tokens), "beam_prefixes"),
        ("beam search space", "O(B·(T + N))",
         f"B·N + B·T + B = {beam_space_numbers(B, N, T)} numbers on the shapes tree", True, None),
        (f"B·N scores at N = {C.SPACE_N:,}, B = {C.SPACE_B}, 4 bytes", f"{C.SPACE_MB} MB",
         f"{space_mb:.0f} MB", math.isclose(space_mb, C.SPACE_MB), None),
    ]
    t = Table(title=f"Decoding counts: the course's answers beside exact counts (measured on "
              f"the shapes tree: N = {N} tokens with ⟨BOS⟩, T = {T}, B = {B}); ✓ agrees, "
              "≈ holds but loose, ✗ wrong, corrections listed at the end")
    for col in ("quantity", "course", "library", ""):
        t.add_column(col)
    for q, course, lib, good, err in rows:
        t.add_row(escape(q), escape(course), escape(lib), escape(_ok(good, err)))
    console.print(t)
    return rows


def _show(lm, h) -> str:
    return f"\"{lm.decode(h.tokens)}\"  log p = {h.log_prob:.1f}"


def searches(console: Console) -> dict:
    """Greedy, beam and exact search on the shapes tree beside the course's answers;
    returns what was printed as (text, log p) pairs for the tests."""
    lm = examples.shapes_lm()
    T = C.SHAPES_T
    g = greedy(lm, T, bos=lm.bos)[0]
    beams = beam_search(lm, C.BEAM_WIDTH, T, bos=lm.bos, trace=True)
    ex = exact_search(lm, T, bos=lm.bos)[0]
    full = exhaustive_search(lm, T, bos=lm.bos, top=3)
    console.print(f"\nDecoding the course's tree of shape descriptions (\"the/a\", a colour, a "
                  f"shape; N = {lm.vocab_size} tokens with ⟨BOS⟩, T = {T}); the course's answer "
                  "in brackets", markup=False)
    got = {"greedy": (lm.decode(g.tokens), round(g.log_prob, 1)),
           "beam": [(lm.decode(h.tokens), round(h.log_prob, 1)) for h in beams]}
    mark = "✓" if got["greedy"] == C.GREEDY else "✗"
    console.print(f"  greedy:                    {_show(lm, g)}  [course: \"{C.GREEDY[0]}\" "
                  f"{C.GREEDY[1]}] {mark}", markup=False)
    for i, (h, want) in enumerate(zip(beams, C.BEAM), 1):
        mark = "✓" if got["beam"][i - 1] == want else "✗"
        console.print(f"  beam search B=2 #{i}:      {_show(lm, h)}  [course: \"{want[0]}\" "
                      f"{want[1]}] {mark}", markup=False)
    b1 = beam_search(lm, 1, T, bos=lm.bos)[0]
    got["beam1_is_greedy"] = b1.tokens == g.tokens and b1.log_prob == g.log_prob
    console.print(f"  beam search B=1:           {_show(lm, b1)}  [course: the same as greedy] "
                  f"{'✓' if got['beam1_is_greedy'] else '✗'}", markup=False)
    console.print(f"  exact search (best-first): {_show(lm, ex)}  [{ex.stats.lm_calls} LM "
                  f"calls, {ex.stats.heap_pops} heap pops; the course has no exact answer]",
                  markup=False)
    console.print("  exhaustive top 3:          " + "; ".join(_show(lm, h) for h in full),
                  markup=False)
    lost = _where_beam_lost(g, beams[0].stats.trace)
    if beams[0].log_prob < g.log_prob and lost is not None:
        step, rank, score = lost
        console.print(f"  Beam search (B=2) ends below greedy: at step {step} greedy's prefix "
                      f"\"{lm.decode(g.tokens[:step])}\" ({score:.1f}) ranked {rank} of the "
                      "candidates and left the beam.", markup=False)
    t = Table(title="Beam search, B = 2: every candidate of every step (✓ kept), beside the "
              "course's")
    for col in ("step", "candidate", "log p", "kept", "course log p", "course kept", ""):
        t.add_column(col, justify="right" if "log p" in col else "left")
    got["steps"] = []
    for step in beams[0].stats.trace:
        s = step["step"]
        kept = {(p, j) for p, j, _ in step["selected"]}
        for prefix, tok, score in step["candidates"]:
            text = lm.decode(prefix + (tok,))
            is_kept = (prefix, tok) in kept
            want = C.BEAM_CANDIDATES[s].get(text)
            want_kept = text in C.BEAM_KEPT[s]
            good = want is not None and round(score, 1) == want and is_kept == want_kept
            got["steps"].append((s, text, round(score, 1), is_kept, good))
            t.add_row(str(s), text, f"{score:.1f}", "✓" if is_kept else "",
                      "—" if want is None else f"{want:.1f}", "✓" if want_kept else "",
                      "✓" if good else "✗")
        t.add_section()
    console.print(t)
    return got


def _where_beam_lost(g, trace):
    """(step, rank, score) where greedy's prefix dropped out of the beam, or None."""
    for step in trace:
        t = step["step"]
        ranked = sorted(step["candidates"], key=lambda c: -c[2])
        for rank, (prefix, tok, score) in enumerate(ranked, 1):
            if prefix + (tok,) == g.tokens[:t]:
                if (prefix, tok, score) not in step["selected"]:
                    return t, rank, score
                break
    return None


def run(console: Console) -> None:
    counts(console)
    searches(console)
