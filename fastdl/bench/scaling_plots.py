"""Scaling figures (matplotlib, the optional extra ``fastdl[plot]``): one log-log PNG
per sweep of ``fastdl.bench.scaling.run_sweeps``."""
from __future__ import annotations

import os
import re

import numpy as np

from fastdl._plot import pyplot

__all__ = ["scaling_figure", "scaling_figures", "figure_name"]


def figure_name(result) -> str:
    """The PNG's file name for a sweep: ``scaling_<name>.png`` with every character
    that is not a letter, digit, '-' or '.' made '_' ("beam_search/N" ->
    "scaling_beam_search_N.png")."""
    return "scaling_" + re.sub(r"[^A-Za-z0-9.-]", "_", result.name) + ".png"


def _through_centre(xs, ys, exponent):
    """c·x^exponent through the geometric centre of the points (x̄, ȳ) (log means)."""
    lx, ly = np.log(xs), np.log(ys)
    return np.exp(ly.mean() + exponent * (lx - lx.mean()))


def scaling_figure(result, path) -> str:
    """Measured seconds against x (points), the analytic slope through their geometric
    centre (line), the counted operations scaled to the same centre (dotted), and the
    interval where the time per operation jumps (shaded), if any."""
    plt = pyplot()
    xs = np.asarray(result.xs, np.float64)
    secs = np.asarray(result.seconds, np.float64)
    fig, ax = plt.subplots(figsize=(6.0, 4.2), constrained_layout=True)
    ax.loglog(xs, secs * 1e3, "o", ms=6, label=f"measured (fit slope {result.slope:.2f})")
    if result.best_seconds:
        ax.loglog(xs, np.asarray(result.best_seconds) * 1e3, "x", ms=5, color="tab:blue",
                  alpha=0.6, label=f"fastest sample (slope {result.best_slope:.2f})")
    ax.loglog(xs, _through_centre(xs, secs, result.exponent) * 1e3, "-", lw=1.4,
              label=f"analytic slope {result.exponent:g} (±{result.tol:g})")
    if result.ops and all(o > 0 for o in result.ops):
        ops = np.asarray(result.ops, np.float64)
        scaled = ops * np.exp(np.log(secs).mean() - np.log(ops).mean())
        ax.loglog(xs, scaled * 1e3, ":", lw=1.6, color="black", zorder=3,
                  label=f"{result.ops_label}, scaled (slope {result.ops_slope:.2f})")
    jump = (result.extra or {}).get("jump")
    if jump:
        ax.axvspan(jump[0], jump[1], color="tab:red", alpha=0.08,
                   label="time/op changes regime here")
    ax.set_xlabel(result.variable + (f"   ({result.fixed})" if result.fixed else ""))
    ax.set_ylabel("median time per call (ms)")
    verdict = "pass" if result.passed else "FAIL"
    ax.set_title(f"{result.name}: slope {result.slope:.2f} vs {result.exponent:g} — {verdict}",
                 fontsize=10)
    ax.grid(True, which="both", lw=0.3, alpha=0.6)
    ax.legend(fontsize=8)
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling_figures(results, out_dir) -> list[str]:
    """One PNG per sweep result in ``out_dir`` (created if missing); returns the paths.
    Needs matplotlib (an ImportError naming the ``fastdl[plot]`` extra otherwise)."""
    pyplot()                    # fail before creating anything without matplotlib
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    return [scaling_figure(r, os.path.join(out_dir, figure_name(r))) for r in results]
