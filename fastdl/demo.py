"""``fastdl demo``: the course's worked examples (normalization statistics of a small
tensor, decoding a small tree of shape descriptions, backpropagation through a
bidirectional RNN, LoRA / QLoRA complexity and the choice between them), recomputed
by the library."""
from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

import fastdl
from fastdl import complexity
from fastdl.decode import beam_search, exact_search, exhaustive_search, examples, greedy

# The course's normalization exercise: 4 samples x 2 channels x 3 features.
DOC_X = np.array([[[2, 5, 1], [4, 3, 4]],
                  [[1, 2, 4], [1, 2, 2]],
                  [[3, 1, 2], [3, 2, 4]],
                  [[3, 4, 3], [5, 2, 3]]], dtype=np.float64)


def _fmt(a) -> str:
    return np.array2string(np.asarray(a), precision=3, floatmode="fixed", separator=" ")


def normalization(console: Console) -> None:
    table = Table(title="Normalization statistics of the course's 4×2×3 tensor "
                  "(biased variance)")
    for col in ("kind", "statistic shape", "mean", "variance"):
        table.add_column(col)
    for kind in ("batch", "layer", "instance"):
        mean, var = fastdl.norm_stats(DOC_X, kind)
        table.add_row(kind, str(mean.shape), _fmt(mean), _fmt(var))
    console.print(table)


def decoding(console: Console) -> None:
    lm = examples.shapes_lm()
    T = 3

    def show(h):
        return f"\"{lm.decode(h.tokens)}\"  log p = {h.log_prob:.1f}"

    g = greedy(lm, T, bos=lm.bos)[0]
    beams = beam_search(lm, 2, T, bos=lm.bos, trace=True)
    ex = exact_search(lm, T, bos=lm.bos)[0]
    full = exhaustive_search(lm, T, bos=lm.bos, top=3)
    N = lm.vocab_size
    console.print(f"\nDecoding the shapes tree (N = {N} tokens with ⟨BOS⟩, T = {T})")
    console.print(f"  greedy:                   {show(g)}")
    for i, h in enumerate(beams, 1):
        console.print(f"  beam search B=2 #{i}:     {show(h)}")
    console.print(f"  exact search (best-first): {show(ex)}  "
                  f"[{ex.stats.lm_calls} LM calls, {ex.stats.heap_pops} heap pops]")
    console.print("  exhaustive top 3:         " + "; ".join(show(h) for h in full)
                  + f"  [{full[0].stats.candidates_scored} candidates scored = Σ N^t, "
                  f"N^T = {complexity.exhaustive_sequences(N, T)} sequences]")
    lost = _where_beam_lost(g, beams[0].stats.trace)
    if beams[0].log_prob < g.log_prob and lost is not None:
        step, rank, score = lost
        console.print(f"  Beam search (B=2) ends below greedy: at step {step} greedy's prefix "
                      f"\"{lm.decode(g.tokens[:step])}\" ({score:.1f}) ranked {rank} of the "
                      "candidates and left the beam.")
    table = Table(title="Beam search, B = 2: every candidate of every step (✓ kept)")
    for col in ("step", "candidate", "log p", "kept"):
        table.add_column(col, justify="right" if col == "log p" else "left")
    for step in beams[0].stats.trace:
        kept = {(p, j) for p, j, _ in step["selected"]}
        for prefix, tok, score in step["candidates"]:
            table.add_row(str(step["step"]), lm.decode(prefix + (tok,)), f"{score:.1f}",
                          "✓" if (prefix, tok) in kept else "")
        table.add_section()
    console.print(table)
    st = beams[0].stats
    console.print(f"  complexity, measured vs analytic: {st.lm_calls} LM calls; "
                  f"Σ B_t·N = {st.candidates_scored} candidates scored (formula "
                  f"{complexity.beam_candidates(2, N, T)}); hypotheses held with backpointers: "
                  f"{st.hypothesis_tokens} tokens (O(B·T), formula "
                  f"{complexity.beam_backpointer_tokens(2, N, T)}); copying whole prefixes "
                  f"would move {complexity.beam_prefix_copy_tokens(2, N, T)} (O(B·T²)).")


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


def run(console: Console, out_dir: str | None = "fastdl-demo", *, train: bool = True) -> int:
    """Print every example; files (the unrolled graph, the gradient-flow plot, the
    fine-tuned adapters) go to ``out_dir`` (None: print the graph instead of writing
    files); ``train=False`` skips the QLoRA fine-tuning run."""
    from fastdl import demo_lora, demo_rnn
    normalization(console)
    decoding(console)
    demo_rnn.run(console, out_dir)
    demo_lora.run(console, out_dir, train=train)
    return 0
