"""``fastdl demo``: the course's worked examples (normalization statistics of a small
tensor, decoding a small tree of shape descriptions, backpropagation through a
bidirectional RNN, LoRA / QLoRA complexity and the choice between them), recomputed
by the library beside the course's answers, and the places where those answers are
loose or wrong, each with the corrected value."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import fastdl
from fastdl import demo_course as C
from fastdl import demo_errata

# course statistic -> the erratum that explains a disagreement
_NORM_ERRATA = {("batch", "mean", (1,)): "batch_mean_2"}


def _fmt(a) -> str:
    return np.array2string(np.asarray(a), precision=3, floatmode="fixed", separator=" ")


def _exact(v: float) -> str:
    f = Fraction(v).limit_denominator(1000)
    return str(f) if float(f) == v or abs(float(f) - v) < 1e-12 else f"{v:.6g}"


def normalization(console: Console) -> list:
    """Every mean and variance of the course's tensor, the library's value (as a fraction:
    the inputs are integers) beside the course's; returns the rows for the tests."""
    console.print("\nNormalization statistics of the course's 4×2×3 tensor (batch of 4, 2 "
                  "channels, 3 features; biased variances):\n" + _fmt(C.NORM_X), markup=False)
    rows = []
    t = Table(title="Library vs the course (✓: equal at the course's 3 decimals)")
    for col in ("norm", "statistic", "index", "library", "", "course", ""):
        t.add_column(col)
    for kind, (mu, var, dec) in C.NORM_STATS.items():
        lib_mu, lib_var = fastdl.norm_stats(C.NORM_X, kind)
        for name, lib, course in (("mean", lib_mu, mu), ("variance", lib_var, var)):
            course = np.asarray(course)
            for idx in np.ndindex(course.shape):
                v, c = float(lib[idx]), float(course[idx])
                good = C.agrees(c, v, dec)
                err = _NORM_ERRATA.get((kind, name, idx))
                mark = "✓" if good else f"✗ see “{err}”" if err else "✗"
                rows.append((kind, name, idx, v, c, good, err))
                t.add_row(kind, name, str(tuple(i + 1 for i in idx)), _exact(v),
                          f"{v:.4f}", f"{c:.{dec}f}", escape(mark))
        t.add_section()
    console.print(t)
    # elements behind each statistic: the course's 1/(B·F), 1/(C·F) and 1/F factors
    sizes = {k: C.NORM_X.size // fastdl.norm_stats(C.NORM_X, k)[0].size for k in C.NORM_STATS}
    console.print("  elements per statistic: " + ", ".join(f"{k} {n}" for k, n in sizes.items())
                  + " (the course's 1/12, 1/6 and 1/3)", markup=False)
    same = []
    for groups, kind in ((1, "layer"), (2, "instance")):
        g = fastdl.norm_stats(C.NORM_X, "group", num_groups=groups)
        ref = fastdl.norm_stats(C.NORM_X, kind)
        same.append("=" if all(np.allclose(a.reshape(b.shape), b) for a, b in zip(g, ref))
                    else "≠")
    console.print(f"  group norm (not worked in the course), means and variances: 1 group "
                  f"{same[0]} layer norm, 2 groups of 1 channel {same[1]} instance norm",
                  markup=False)
    return rows


def errata(console: Console) -> None:
    console.print("\nWhere the course text is loose or wrong (each corrected value computed "
                  "by the library above):", markup=False)
    for i, e in enumerate(demo_errata.ERRATA, 1):
        console.print(f"  {i:2d}. [{e.key}] {e.where}\n      course:    {e.course}\n"
                      f"      corrected: {e.text()}", markup=False, highlight=False)


def run(console: Console, out_dir: str | None = "fastdl-demo", *, train: bool = True) -> int:
    """Print every example; files (the unrolled graph, the gradient-flow plot, the
    fine-tuned adapters) go to ``out_dir`` (None: print the graph instead of writing
    files); ``train=False`` skips the QLoRA fine-tuning run."""
    from fastdl import demo_decode, demo_lora, demo_rnn
    normalization(console)
    demo_decode.run(console)
    demo_rnn.run(console, out_dir)
    demo_lora.run(console, out_dir, train=train)
    errata(console)
    return 0
