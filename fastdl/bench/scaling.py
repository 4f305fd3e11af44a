"""Scaling sweeps: time one operation over a geometric range of one variable, fit the
log-log slope, and hold it against the exponent of the operation's analytic count.

Each sweep (``fastdl.bench.scaling_cases.SWEEPS``) varies one size (the vocabulary N,
the beam width B, the length T, the model width d, ...) with the others fixed.  Every
point is timed as the median of interleaved rounds (as ``fastdl.bench.runner.measure``:
a noisy machine slows all points alike; the fastest sample is kept beside it) and its operations are counted by an
instrumented run where the code counts them (candidates scored, multiply-adds of the
GEMMs), else taken from the analytic formula.  The fitted slope of time against x
passes when it is within the sweep's tolerance of the analytic exponent.

Where the time per counted operation changes along a sweep, the regime note says
at which x and why: the working set crossing a cache size of this machine, a fixed
per-call or per-step cost being amortized, or matrix products reaching their
compute-bound speed as their operands grow.
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from fastdl.bench import runner
from fastdl.bench.case import matches

__all__ = ["Point", "Sweep", "SweepResult", "fit_slope", "verdict", "cache_sizes",
           "jump_index", "regime_note", "time_points", "run_sweep", "run_sweeps", "format_table"]

# a time per operation that changes by less than this between neighbouring points
# (or between the two ends) is one regime: a repeat on this shared machine varies by ~20 %
JUMP = 1.4


@dataclass
class Point:
    """One size of a sweep, built once: ``thunk()`` runs the timed operation,
    ``ops`` its counted operations, ``bytes`` its working set (what one call touches)."""

    thunk: Callable[[], object]
    ops: int
    bytes: int


@dataclass(frozen=True)
class Sweep:
    """One variable of one area.  ``make(x)`` builds the point of size x;
    ``formula(x)`` is the analytic count (None: the counts are the formula);
    ``exponent`` the analytic exponent of the dominant term over ``xs``, ``tol``
    the accepted distance of the fitted slope from it, ``why`` both explained;
    ``kind``: "stream" (memory-bound passes), "gemm" (matrix products) or "search"
    (a loop of steps with a fixed cost each) names which regime changes to expect."""

    name: str
    area: str
    variable: str
    xs: tuple
    quick_xs: tuple
    exponent: float
    tol: float
    make: Callable[[int], Point]
    ops_label: str
    why: str
    kind: str
    fixed: str = ""
    formula: Callable[[int], int] | None = None
    formula_name: str = ""


@dataclass
class SweepResult:
    name: str
    area: str
    variable: str
    xs: list
    seconds: list
    ops: list
    bytes: list
    slope: float                 # fitted log-log slope of the median time against x
    ops_slope: float             # ... of the counted operations against x
    exponent: float
    tol: float
    passed: bool
    regime: str
    ops_label: str
    why: str
    fixed: str = ""
    formula_ops: list | None = None
    counted_matches_formula: bool | None = None
    half_slopes: tuple = ()
    rounds: int = 0
    # the fastest sample of each point and their slope: contention from other processes
    # only ever slows a call, so where it differs much from ``slope`` the machine was busy
    best_seconds: list = field(default_factory=list)
    best_slope: float = float("nan")
    quick: bool = False          # fewer points and rounds: the verdict is indicative only
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def fit_slope(xs, ys) -> float:
    """Least-squares slope of log y against log x (natural logs; the slope is the
    exponent p of y ∝ x^p).  Needs two distinct positive x and positive y."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"xs and ys must be 1-d of one length, got shapes {x.shape} and "
                         f"{y.shape}")
    if len(x) < 2 or not (np.all(x > 0) and np.all(y > 0)
                          and np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"xs and ys must hold at least 2 positive finite values, got "
                         f"xs={x.tolist()}, ys={y.tolist()}")
    lx, ly = np.log(x), np.log(y)
    lx0 = lx - lx.mean()
    den = float(lx0 @ lx0)
    if den == 0.0:
        raise ValueError(f"xs must hold at least 2 distinct values, got {x.tolist()}")
    return float(lx0 @ (ly - ly.mean()) / den)


def verdict(slope: float, exponent: float, tol: float) -> bool:
    """True when the fitted slope is within ``tol`` of the analytic exponent."""
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    return bool(math.isfinite(slope) and abs(slope - exponent) <= tol)


def cache_sizes() -> dict:
    """{"L1d": bytes, "L2": bytes, "L3": bytes} of cpu0, read from
    /sys/devices/system/cpu/cpu0/cache (levels it does not list are absent)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    out = {}
    try:
        entries = sorted(e for e in os.listdir(base) if e.startswith("index"))
    except OSError:
        return out
    for e in entries:
        try:
            with open(os.path.join(base, e, "level")) as f:
                level = int(f.read())
            with open(os.path.join(base, e, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(base, e, "size")) as f:
                text = f.read().strip()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        size = int(text.rstrip("KMG")) * mult
        out["L1d" if level == 1 else f"L{level}"] = size
    return out


def _mib(b: float) -> str:
    return f"{b / 2**20:.3g} MiB" if b >= 2**20 else f"{b / 2**10:.3g} KiB"


def _half_slopes(xs, ys) -> tuple:
    """Slopes of the first and the last half of the points (they share the middle one
    when the count is odd)."""
    k = (len(xs) + 1) // 2
    if len(xs) < 4:
        return ()
    return fit_slope(xs[:k], ys[:k]), fit_slope(xs[-k:], ys[-k:])


_FALLING = {
    "stream": "a fixed cost per call (argument checks, dispatch) amortized over more elements",
    "gemm": ("the matrix products speed up as their operands grow (more reuse per byte: "
             "memory-bound to compute-bound) and the fixed cost per call (Python, "
             "per-head loops, dispatch) is amortized"),
    "search": ("a fixed cost per step (the Python loop, the LM call, bookkeeping) amortized "
               "over more candidates per step"),
}
_RISING = {
    "stream": "memory-bound: each element now comes from a slower level",
    "gemm": "the operands no longer stay in the cache between the products",
    "search": "each step's scores no longer stay in the cache between passes",
}


def _beyond_l2(nbytes: int, caches: dict) -> str:
    """Why a working set smaller than the L3 can still leave it: the L3 is shared."""
    l2, l3 = caches.get("L2"), caches.get("L3")
    if l2 and l3 and l2 < nbytes < l3:
        return (f"past L2 ({_mib(l2)}) the data live in the L3 ({_mib(l3)}), shared by every "
                f"core and process on the socket, so this process keeps only a share of it "
                f"and the rest comes from memory; ")
    return ""


def jump_index(seconds, ops) -> int | None:
    """i where the time per counted operation changes most between points i and i+1,
    when that change exceeds JUMP (else None)."""
    c = np.asarray(seconds, np.float64) / np.asarray(ops, np.float64)
    if len(c) < 2:
        return None
    steps = np.abs(np.log(c[1:] / c[:-1]))
    i = int(np.argmax(steps))
    return i if steps[i] >= math.log(JUMP) else None


def regime_note(xs, seconds, ops, nbytes, kind: str, caches: dict | None = None) -> str:
    """Where the time per counted operation changes along a sweep, and why.

    The largest change between neighbouring points is reported when it exceeds JUMP
    (x at both sides, the working sets); a rise is put down to the working set
    crossing a cache size when one lies between them; a steady fall (or rise) between
    the ends, with no single jump, is reported with the two halves' slopes."""
    caches = cache_sizes() if caches is None else caches
    c = np.asarray(seconds, np.float64) / np.asarray(ops, np.float64)
    if len(c) < 2:
        return "one point: no regime"
    halves = _half_slopes(xs, seconds)
    hs = (f"slopes {halves[0]:.2f} (first half) / {halves[1]:.2f} (last half)"
          if halves else "")
    steps = c[1:] / c[:-1]
    ends = c[-1] / c[0]
    i = jump_index(seconds, ops)
    if i is not None:
        a, b = nbytes[i], nbytes[i + 1]
        crossed = [name for name, size in caches.items() if a <= size < b]
        up = steps[i] > 1
        text = (f"time/op {'rises' if up else 'falls'} ×{steps[i] if up else 1 / steps[i]:.2f} "
                f"between x={xs[i]} and x={xs[i + 1]} (working set {_mib(a)} → {_mib(b)})")
        if up and b < 1.1 * a:
            text += (": the working set does not change, so another process's load is the "
                     "likely cause, not the operation")
        elif up and crossed:
            size = caches[crossed[-1]]
            text += f": it crosses {crossed[-1]} ({_mib(size)}); {_RISING[kind]}"
        elif up:
            text += f": {_beyond_l2(b, caches)}{_RISING[kind]}"
        else:
            text += f": {_FALLING[kind]}"
        if i >= 1 and len(xs) - i - 1 >= 2:
            text += (f"; slope {fit_slope(xs[:i + 1], seconds[:i + 1]):.2f} up to x={xs[i]}, "
                     f"{fit_slope(xs[i + 1:], seconds[i + 1:]):.2f} from x={xs[i + 1]}")
        elif hs:
            text += f"; {hs}"
        return text
    if abs(math.log(ends)) >= math.log(JUMP):
        up = ends > 1
        text = (f"time/op {'rises' if up else 'falls'} ×{ends if up else 1 / ends:.2f} "
                f"from x={xs[0]} to x={xs[-1]} without a single jump: "
                f"{_RISING[kind] if up else _FALLING[kind]}")
        return f"{text}; {hs}" if hs else text
    span = [name for name, size in caches.items() if nbytes[0] <= size < nbytes[-1]]
    text = f"one regime: time/op within ×{JUMP} along the range"
    if span:
        text += f" although the working set crosses {', '.join(span)}"
    return f"{text}; {hs}" if hs else text


def _timing(quick: bool) -> dict:
    if quick:
        return dict(min_rounds=2, max_rounds=4, budget_s=0.3, warm_s=0.005)
    return dict(min_rounds=5, max_rounds=15, budget_s=2.0, warm_s=0.02)


def time_points(thunks: dict, *, min_rounds: int, max_rounds: int, budget_s: float,
                warm_s: float) -> tuple[dict, dict, int]:
    """(median, fastest, rounds) per thunk, timed in interleaved rounds as
    ``fastdl.bench.runner.measure`` does (each contender warmed, then a short burst)."""
    samples, rounds = runner.sample_rounds(thunks, min_rounds=min_rounds,
                                           max_rounds=max_rounds, budget_s=budget_s,
                                           warm_s=warm_s)
    return ({k: statistics.median(v) for k, v in samples.items()},
            {k: min(v) for k, v in samples.items()}, rounds)


def run_sweep(sweep: Sweep, *, quick: bool = False, caches: dict | None = None) -> SweepResult:
    """Build every point of ``sweep``, time them together, fit and judge."""
    xs = list(sweep.quick_xs if quick else sweep.xs)
    points = {x: sweep.make(x) for x in xs}
    med, best, rounds = time_points({str(x): p.thunk for x, p in points.items()},
                                    **_timing(quick))
    secs = [med[str(x)] for x in xs]
    fastest = [best[str(x)] for x in xs]
    ops = [points[x].ops for x in xs]
    nbytes = [points[x].bytes for x in xs]
    formula = [int(sweep.formula(x)) for x in xs] if sweep.formula is not None else None
    slope = fit_slope(xs, secs)
    res = SweepResult(
        name=sweep.name, area=sweep.area, variable=sweep.variable, xs=xs, seconds=secs,
        ops=ops, bytes=nbytes, slope=slope, ops_slope=fit_slope(xs, ops),
        exponent=sweep.exponent, tol=sweep.tol, passed=verdict(slope, sweep.exponent, sweep.tol),
        regime=regime_note(xs, secs, ops, nbytes, sweep.kind, caches), ops_label=sweep.ops_label,
        why=sweep.why, fixed=sweep.fixed, formula_ops=formula,
        counted_matches_formula=None if formula is None else formula == ops,
        half_slopes=_half_slopes(xs, secs), rounds=rounds, quick=quick,
        best_seconds=fastest, best_slope=fit_slope(xs, fastest))
    if sweep.formula_name:
        res.extra["formula"] = sweep.formula_name
    j = jump_index(secs, ops)
    if j is not None:
        res.extra["jump"] = (xs[j], xs[j + 1])
    return res


def _selected(sweeps, only) -> list:
    if only is None:
        return list(sweeps)
    pats = [only] if isinstance(only, str) else only
    if not isinstance(pats, (list, tuple)) or not all(isinstance(p, str) for p in pats):
        raise TypeError(f"only must be None, a pattern string or a list of them, got {only!r}")
    out = [s for s in sweeps if any(matches(s.name, p) for p in pats)]
    if not out:
        raise ValueError(f"only={only!r} matches no sweep; the sweeps are "
                         f"{', '.join(s.name for s in sweeps)}")
    return out


def run_sweeps(only=None, quick: bool = False, *, sweeps: Iterable[Sweep] | None = None,
               progress=None) -> list[SweepResult]:
    """Run the declared sweeps (``only``: a glob or substring of the names, or a list
    of them; ``quick``: fewer points, one or two rounds each).  ``progress(sweep)`` is
    called before each sweep."""
    if not isinstance(quick, bool):
        raise TypeError(f"quick must be a bool, got {quick!r}")
    if sweeps is None:
        from fastdl.bench.scaling_cases import SWEEPS
        sweeps = SWEEPS
    caches = cache_sizes()
    out = []
    for s in _selected(list(sweeps), only):
        if progress is not None:
            progress(s)
        out.append(run_sweep(s, quick=quick, caches=caches))
    return out


def _range(xs) -> str:
    return f"{xs[0]:g}…{xs[-1]:g} ({len(xs)} pts)"


def format_table(results: list[SweepResult]) -> list[str]:
    """Lines for a terminal: one row per sweep (sweep, variable, range, measured slope
    of the median times, slope of the fastest samples, slope of the counted operations,
    analytic exponent ± tolerance, result of the median slope), each followed by its
    regime note; then a one-line summary."""
    head = ("sweep", "var", "range", "slope", "fastest", "ops slope", "analytic", "tol",
            "result")
    rows = []
    for r in results:
        counted = "" if r.counted_matches_formula is None else (
            " =formula" if r.counted_matches_formula else " ≠formula")
        rows.append((r.name, r.variable, _range(r.xs), f"{r.slope:.2f}",
                     f"{r.best_slope:.2f}", f"{r.ops_slope:.2f}{counted}", f"{r.exponent:g}", f"±{r.tol:g}",
                     "pass" if r.passed else "FAIL"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    for r, row in zip(results, rows):
        out.append(line(row))
        out.append(f"    regime: {r.regime}")
    n_ok = sum(r.passed for r in results)
    summary = f"{n_ok}/{len(results)} slopes within tolerance"
    if any(r.quick for r in results):
        summary += " (quick: 3 points and a few rounds each, indicative only)"
    out.append(summary)
    return out
