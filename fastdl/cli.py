"""The ``fastdl`` command: info, backends, bench, demo."""
from __future__ import annotations

import argparse
import json
import platform
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import fastdl
from fastdl import registry


def _fmt_ratio(x, digits=2):
    return "—" if x is None else f"{x:.{digits}f}×"


def _fmt_time(t):
    if t is None:
        return "—"
    return f"{t * 1e3:.3f} ms" if t < 1 else f"{t:.2f} s"


def cmd_info(args, console: Console) -> int:
    info = fastdl.build_info()
    if args.json:
        console.print_json(json.dumps(info))
        return 0
    table = Table(title="fastdl build info", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in info.items():
        table.add_row(k, str(v))
    console.print(table)
    return 0


def cmd_backends(args, console: Console) -> int:
    infos = fastdl.backends()
    ops = sorted({op for info in infos.values() for op in info.ops} | registry._known_ops())
    table = Table(title="fastdl backends (priority: " + ", ".join(
        registry.get_backend_priority() + (registry.REFERENCE,)) + ")")
    for col in ("backend", "status", "source", "ops"):
        table.add_column(col, style="bold" if col == "backend" else None)
    for name, info in infos.items():
        status = {"loaded": "[green]loaded[/]", "error": "[red]error[/]"}.get(info.status, info.status)
        table.add_row(name, status, info.source, str(len(info.ops)))
    console.print(table)
    # one row per op: it stays readable however many ops there are
    matrix = Table(title="ops by backend (✓ implemented)")
    matrix.add_column("op", style="bold")
    for name in infos:
        matrix.add_column(name, justify="center")
    for op in ops:
        matrix.add_row(op, *("✓" if op in info.ops else "·" for info in infos.values()))
    console.print(matrix)
    for name, info in infos.items():
        if info.error:
            console.print(f"[red]{name}[/]: {info.error}")
    return 0


def _results_table(rows) -> Table:
    table = Table(title="fastdl bench (speed-ups: peer time / this time; limit: this time / "
                  "plain read or copy of the same bytes)")
    table.add_column("case", no_wrap=True, overflow="fold")
    for col, just in [("backend", "left"), ("median", "right"), ("GB/s", "right"),
                      ("vs numpy", "right"), ("vs torch", "right"), ("/ mem limit", "right"),
                      ("limit", "right"), ("other", "left"), ("target", "left")]:
        table.add_column(col, justify=just, no_wrap=col not in ("target", "other"))
    last = None
    for r in rows:
        if last is not None and r.case != last:
            table.add_section()
        target = ""
        if r.targets:
            target = "[green]met[/]" if not r.missed else "[red]missed: " + "; ".join(r.missed) + "[/]"
        other = "; ".join([f"vs {k} {_fmt_ratio(v)}" for k, v in r.vs_peers.items()]
                          + [f"{k} {v:.3g}" for k, v in r.metrics.items()])
        table.add_row(r.case if r.case != last else "", r.backend, _fmt_time(r.median_s),
                      f"{r.gbps:.1f}", _fmt_ratio(r.vs_numpy), _fmt_ratio(r.vs_torch),
                      _fmt_ratio(r.vs_limit), f"{_fmt_time(r.limit_s)} {r.limit_kind}", other,
                      target)
        last = r.case
    return table


def cmd_bench(args, console: Console) -> int:
    from fastdl.bench import all_cases, run_cases

    if args.threads:
        fastdl.set_num_threads(args.threads)
    if args.backend:
        registry._check_names(tuple(args.backend))
    # --only picks from every case unless --quick is given too
    cases = all_cases(quick=args.quick or not (args.full or args.only), only=args.only)
    if not cases:
        console.print(f"[red]no benchmark case matches --only {args.only!r}[/]")
        return 2
    info = fastdl.build_info()
    console.print(f"fastdl {info['version']} · {platform.processor() or platform.machine()} · "
                  f"threads {fastdl.get_num_threads()} · simd {info.get('simd_active')} · "
                  f"openmp {info.get('openmp')} · numpy {info['numpy']}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(cases))

        def step(case):
            progress.update(task, description=case.name)
            if step.started:
                progress.advance(task)
            step.started = True
        step.started = False
        rows = run_cases(cases, backends=args.backend, full=args.full,
                         with_torch=not args.no_torch, rounds=args.rounds, progress=step)
        progress.advance(task)
    console.print(_results_table(rows))
    if not any(r.backend == "torch" for r in rows):
        console.print("PyTorch not installed (or --no-torch): the 'vs torch' column is empty.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"build_info": info, "full": args.full,
                       "results": [r.as_dict() for r in rows]}, f, indent=2, default=str)
        console.print(f"wrote {args.json}")
    return 0


def cmd_demo(args, console: Console) -> int:
    from fastdl import demo
    return demo.run(console)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastdl", description=fastdl.__doc__)
    p.add_argument("--version", action="version", version=f"fastdl {fastdl.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="build and machine information")
    pi.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("backends", help="table of backends x ops")
    sub.add_parser("demo", help="the document's worked examples, recomputed")
    pb = sub.add_parser("bench", help="run the benchmark cases")
    mode = pb.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="quick set, under a minute (default)")
    mode.add_argument("--full", action="store_true", help="every case, more rounds")
    pb.add_argument("--only", metavar="PATTERN",
                    help="glob or substring of case names, chosen from every case (with "
                         "--quick: from the quick set)")
    pb.add_argument("--backend", nargs="+", metavar="NAME",
                    help="backends to measure (numpy is always measured as the baseline)")
    pb.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    pb.add_argument("--threads", type=int, help="kernel threads (default: all available)")
    pb.add_argument("--rounds", type=int, help="fixed number of timed rounds per case")
    pb.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:          # logs and pipes: do not squeeze the tables
        console = Console(width=250)
    try:
        return {"info": cmd_info, "backends": cmd_backends, "bench": cmd_bench,
                "demo": cmd_demo}[args.command](
            args, console)
    except (ValueError, TypeError) as exc:
        console.print(f"[red]fastdl {args.command}: {exc}[/]")
        return 2


if __name__ == "__main__":
    sys.exit(main())
