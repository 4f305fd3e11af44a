"""Per-op bar charts for the benchmark page: each case's ratio to every peer and to
the memory/BLAS limit (matplotlib, the optional extra ``fastdl[plot]``)."""
from __future__ import annotations

import math
import os

from fastdl._plot import pyplot
from fastdl.bench.table import fmt_ratio

LIMIT = "memory/BLAS limit"
# fixed colours for the comparisons every area has; named peers take the rest in turn
_FIXED = {"numpy": "#4c72b0", "torch": "#dd8452", LIMIT: "#7f7f7f"}
_PEER_COLOURS = ("#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#ccb974",
                 "#64b5cd")


def comparisons(row) -> list[tuple[str, float]]:
    """(name, ratio) pairs of a row, every one read "above 1: this row is faster":
    the NumPy backend's, torch's and each peer's time over this time, and the
    limit's time over this time (1 = as fast as a plain stream of the bytes, or
    the plain matrix product, can go).  Missing or non-positive figures are left out."""
    pairs = [("numpy", row.vs_numpy), ("torch", row.vs_torch), *row.vs_peers.items(),
             (LIMIT, 1.0 / row.vs_limit if row.vs_limit else None)]
    return [(k, float(v)) for k, v in pairs
            if v is not None and math.isfinite(v) and v > 0]


def _colours(names: list[str]) -> dict[str, str]:
    out, peers = {}, 0
    for n in names:
        if n in _FIXED:
            out[n] = _FIXED[n]
        else:
            out[n] = _PEER_COLOURS[peers % len(_PEER_COLOURS)]
            peers += 1
    return out


def peer_limit_bars(rows, path, *, title: str, strip: str = "") -> str:
    """One group of horizontal bars per row (a case): its ratio to each peer and to
    the limit, drawn from 1 on a log scale (right of the line at 1: this backend is
    faster).  ``strip`` is a prefix left off the case names.  Returns ``path``."""
    plt = pyplot()
    rows = list(rows)
    if not rows:
        raise ValueError("rows: expected at least one benchmark row to plot, got none")
    groups = [comparisons(r) for r in rows]
    names = list(dict.fromkeys(n for g in groups for n, _ in g))
    colours = _colours(names)
    nbars = sum(max(len(g), 1) for g in groups)
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.15 * nbars + 0.1 * len(rows)),
                           constrained_layout=True)
    y, ticks, labels, values = 0.0, [], [], []
    labelled: set[str] = set()
    for r, g in zip(rows, groups):
        k = max(len(g), 1)
        h = 0.8 / k
        top = y
        for i, (n, v) in enumerate(g):
            yi = top + (i + 0.5) * h
            ax.barh(yi, v - 1.0, left=1.0, height=h * 0.92, color=colours[n],
                    label=None if n in labelled else n)
            labelled.add(n)
            ax.text(v, yi, f" {fmt_ratio(v)} ", va="center", ha="left" if v >= 1 else "right",
                    fontsize=6.5)
            values.append(v)
        if not g:
            ax.text(1.0, top + 0.4, "  no peer or limit measured", va="center", fontsize=7,
                    color="#57606a")
        ticks.append(top + 0.4)
        name = r.case[len(strip):] if strip and r.case.startswith(strip) else r.case
        labels.append(name)
        y += 1.0
    ax.set_xscale("log")
    lo = min([1.0, *values]) / 2.5
    hi = max([1.0, *values]) * 2.5
    ax.set_xlim(lo, hi)
    ax.set_ylim(y - 0.1, -0.1)          # the first case on top
    ax.axvline(1.0, color="black", lw=0.9)
    ax.set_yticks(ticks, labels, fontsize=7.5)
    ax.grid(axis="x", which="major", color="#e5e5e5", lw=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel(f"{rows[0].backend}'s speed against each: their time / its time "
                  f"(log; right of 1: {rows[0].backend} faster); the limit's bar: limit "
                  "time / its time (1 = at the limit)", fontsize=8)
    ax.set_title(title, fontsize=10)
    if labelled:
        fig.legend(loc="outside upper center", ncols=min(len(labelled), 4), fontsize=7.5,
                   frameon=False)
    path = os.fspath(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
