"""``fastdl bench --complexity``: every analytic count beside an instrumented run, and the
measured scaling of time against each size beside the analytic exponent."""
from __future__ import annotations

import os
import time

from rich.console import Console
from rich.table import Table

__all__ = ["run"]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) and abs(v) >= 10**9:
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())


def _verdict(row) -> str:
    if row["counted"] is None:
        return "not run"
    ok = (row["counted"] == row["analytic"] if row["relation"] == "==" else
          row["counted"] <= row["analytic"])
    return "met" if ok else "missed"


def count_rows():
    """The rows of ``fastdl.complexity.report()`` with their verdicts."""
    from fastdl import complexity
    rows = complexity.report()
    for r in rows:
        r["result"] = _verdict(r)
    return rows


def _count_table(rows) -> Table:
    t = Table(title="Counts: each formula beside an instrumented run of the library",
              title_justify="left")
    for col in ("area", "quantity", "formula", "shape", "analytic", "counted", "", "course"):
        t.add_column(col, overflow="fold")
    for r in rows:
        rel = "=" if r["relation"] == "==" else "≤"
        t.add_row(r["area"], r["quantity"], r["formula"], _params(r["params"]),
                  _fmt(r["analytic"]), _fmt(r["counted"]),
                  {"met": f"[green]{rel} met[/]", "missed": "[red]missed[/]",
                   "not run": "too large to run"}[r["result"]],
                  r["document"] or "")
    return t


def _summary(rows) -> str:
    met = sum(r["result"] == "met" for r in rows)
    missed = sum(r["result"] == "missed" for r in rows)
    skipped = sum(r["result"] == "not run" for r in rows)
    return (f"{len(rows)} counts: {met} equal their formula (or stay within their bound), "
            f"{missed} do not, {skipped} too large to run (the course's own examples, "
            "computed exactly)")


def page_sections(rows, results, figures) -> list[dict]:
    """The complexity part of ``index.html``: the counts table, the slope table and
    the scaling plots."""
    count_table = {"columns": ["area", "quantity", "formula", "shape", "analytic", "counted",
                               "result", "course"],
                   "rows": [[r["area"], r["quantity"], r["formula"], _params(r["params"]),
                             _fmt(r["analytic"]), _fmt(r["counted"]),
                             {"text": r["result"], "status": {"met": "met", "missed": "missed",
                                                              "not run": "n/a"}[r["result"]]},
                             r["document"] or ""] for r in rows]}
    slope_table = {"columns": ["sweep", "variable", "range", "measured slope",
                               "counted-ops slope", "analytic", "tolerance", "result",
                               "regime"],
                   "rows": [[s.name, s.variable, f"{s.xs[0]:g} to {s.xs[-1]:g}",
                             f"{s.slope:.2f}", f"{s.ops_slope:.2f}", f"{s.exponent:g}",
                             f"±{s.tol:g}",
                             {"text": "pass" if s.passed else "fail",
                              "status": "met" if s.passed else "missed"}, s.regime]
                            for s in results]}
    return [
        {"title": "Counts against the formulas",
         "text": _summary(rows) + ". Each analytic count is set beside the count of a run of "
                 "the library on the shape shown; comparison counts are worst-case bounds.",
         "images": [], "table": count_table},
        {"title": "Scaling: time against each size",
         "text": f"{sum(s.passed for s in results)} of {len(results)} fitted log-log slopes "
                 "are within their tolerance of the analytic exponent. Each plot draws the "
                 "measured times and a line of the analytic slope through their centre.",
         "images": list(figures), "table": slope_table},
    ]


def run(args, console: Console, header, say, emit, page_writer, write_json) -> int:
    """The ``--complexity`` run: counts, then the sweeps (``--only`` picks sweeps,
    ``--quick`` runs fewer points), then the page and JSON when asked."""
    import fastdl
    from fastdl.bench import scaling
    t0 = time.perf_counter()
    width = console.width
    info = fastdl.build_info()
    header(console, info, width)
    rows = count_rows()
    console.print(_count_table(rows))
    say(console, _summary(rows), width)

    def progress(sweep):
        say(console, f"sweeping {sweep.name} ...", width)

    results = scaling.run_sweeps(args.only, quick=bool(args.quick), progress=progress)
    emit(console, scaling.format_table(results))
    figures = []
    if args.plot:
        from fastdl.bench.scaling_plots import scaling_figures
        figures = scaling_figures(results, args.plot)
        path = page_writer(args.plot, [], None, info, page_sections(rows, results, figures))
        say(console, f"wrote {path}", width)
    elapsed = time.perf_counter() - t0
    missed = sum(r["result"] == "missed" for r in rows)
    failed = sum(not s.passed for s in results)
    say(console, f"complexity: {missed} counts off their formula, {failed} of {len(results)} "
                 f"slopes outside tolerance · {elapsed:.1f} s", width)
    if args.json:
        return write_json(console, args.json, {
            "build_info": info, "counts": rows, "sweeps": [s.as_dict() for s in results],
            "elapsed_s": elapsed, "figures": [os.path.basename(f) for f in figures]})
    return 0
