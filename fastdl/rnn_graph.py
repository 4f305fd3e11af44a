"""The computational graph of the bidirectional RNN unrolled over T steps, as DOT."""
from __future__ import annotations

import os
import shutil
import subprocess

from fastdl._validate import check_choice, check_int

__all__ = ["DotGraph", "unrolled_graph", "render"]

_DIRECTIONS = ("both", "forward", "backward")
_FORMATS = ("svg", "png", "pdf")


class DotGraph(str):
    """Graphviz DOT text (a str) that can render itself: ``g.render("fig.svg")``."""

    def render(self, path, format: str | None = None) -> str:
        return render(self, path, format)


def unrolled_graph(T: int = 3, *, direction: str = "both") -> DotGraph:
    """The network unrolled over steps 1..T: inputs x_t, forward states h_t^(f) from
    the initial h_0^(f), backward states h_t^(b) from the initial h_{T+1}^(b), and
    outputs y_t; edges labelled with the weight they apply (W x_t, U h, V h).
    ``direction``: "both", "forward" or "backward" (that direction's states only).
    The nodes carry fixed positions (step t in column t; rows x, h^(f), h^(b), y)."""
    T = check_int(T, "T", minimum=1, maximum=64)
    check_choice(direction, "direction", _DIRECTIONS)
    dirs = {"both": "fb", "forward": "f", "backward": "b"}[direction]
    lines = ["digraph birnn {",
             '  layout=neato; splines=true; outputorder=edgesfirst;',
             '  node [shape=circle, fontname="Helvetica", fixedsize=true, width=0.7];',
             '  edge [fontname="Helvetica", fontsize=11];']
    dx = 0.36 if dirs == "fb" else 0.0
    row = {"x": 0.0, "f": 1.5, "b": 1.5 + 1.4 * (dirs == "fb"), "y": 1.6 + 1.4 * len(dirs)}

    def node(name, label, col, r, style=""):
        lines.append(f'  {name} [label={label}, pos="{col * 110:.0f},{row[r] * 72:.0f}!"'
                     f'{style}];')

    def h(d, t, style=""):
        node(f"h{d}{t}", f"<h<sub>{t}</sub><sup>({d})</sup>>",
             t - dx if d == "f" else t + dx, d, style)

    for t in range(1, T + 1):
        node(f"x{t}", f"<x<sub>{t}</sub>>", t, "x", ", shape=box")
        node(f"y{t}", f"<y<sub>{t}</sub>>", t, "y", ", shape=doublecircle")
    if "f" in dirs:
        h("f", 0, ", style=dashed")
        for t in range(1, T + 1):
            h("f", t)
    if "b" in dirs:
        h("b", T + 1, ", style=dashed")
        for t in range(1, T + 1):
            h("b", t)

    def edge(a, b, w, d, extra=""):
        # V's labels sit by the output (a mid-edge label would cross the U row)
        key = "headlabel" if w == "V" else "label"
        near = ", labeldistance=2.6, labelangle=-30" if w == "V" else ""
        lines.append(f'  {a} -> {b} [{key}=<{w}<sup>({d})</sup>>{near}{extra}];')

    for t in range(1, T + 1):
        if "f" in dirs:
            edge(f"x{t}", f"hf{t}", "W", "f")
            edge(f"hf{t - 1}", f"hf{t}", "U", "f", ', color="#1f77b4"')
            edge(f"hf{t}", f"y{t}", "V", "f")
        if "b" in dirs:
            edge(f"x{t}", f"hb{t}", "W", "b")
            edge(f"hb{t + 1}", f"hb{t}", "U", "b", ', color="#d62728"')
            edge(f"hb{t}", f"y{t}", "V", "b")
    lines.append("}")
    return DotGraph("\n".join(lines) + "\n")


def render(dot: str, path, format: str | None = None) -> str:
    """Write ``dot`` as SVG, PNG or PDF (``format``, else the suffix of ``path``) with
    Graphviz's ``dot`` program; returns the path.  Without Graphviz installed, a
    RuntimeError says how to get it (the DOT text itself needs nothing)."""
    if not isinstance(dot, str):
        raise TypeError(f"dot must be DOT text (a str), got {type(dot).__name__}")
    path = os.fspath(path)
    fmt = format or os.path.splitext(path)[1].lstrip(".").lower()
    check_choice(fmt, "format (or the suffix of path)", _FORMATS)
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("rendering the graph needs Graphviz's `dot` program, which is not "
                           "on PATH: install it (Debian/Ubuntu: apt install graphviz; conda: "
                           "conda install graphviz; macOS: brew install graphviz), or write "
                           "the DOT text to a .dot file and render it elsewhere")
    proc = subprocess.run([exe, "-n", f"-T{fmt}", "-o", path], input=dot.encode(),
                          capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed ({proc.returncode}): {proc.stderr.decode()[:500]}")
    return path
