"""The ``fastdl`` command: info, backends, bench, demo."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import textwrap
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import fastdl
from fastdl import registry


def _int_arg(name: str, lo: int, hi_fn):
    """argparse type: an int in [lo, hi_fn()], else a usage error (exit status 2)."""
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        hi = hi_fn()
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be between {lo} and {hi}, got {n}")
        return n
    return parse


def _max_threads() -> int:
    from fastdl.bench.contention import cpus
    return 4 * cpus()           # more than 4 threads per CPU only measures the scheduler


def _seconds_arg(text):
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--duration must be a number, got {text!r}") from None
    if not 0 < s <= 600:
        raise argparse.ArgumentTypeError(f"--duration must be in (0, 600] seconds, got {text}")
    return s


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
    ops = sorted({op for info in infos.values() for op in info.ops} | set(fastdl.ops.names()))
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


def _emit(console: Console, lines) -> None:
    """Print finished lines at once (a pipe or a log sees each case as it ends)."""
    for ln in lines:
        text = Text(ln)
        text.highlight_regex(r"\bmissed\??(?=\s|$)", "red")
        text.highlight_regex(r"\bmet\??(?=\s|$)", "green")
        console.print(text, soft_wrap=True)     # lines are fitted already: no rewrapping
    console.file.flush()


def _say(console: Console, text: str, width: int) -> None:
    _emit(console, textwrap.wrap(text, max(width, 40), break_on_hyphens=False))


def _json_path_error(path: str) -> str | None:
    """Why results could not be written to ``path``, found before any case runs."""
    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    if os.path.isdir(full):
        return f"--json {path!r} is a directory; give the path of a file"
    if not os.path.isdir(parent):
        return f"--json {path!r}: the directory {parent!r} does not exist"
    if os.path.exists(full) and not os.access(full, os.W_OK):
        return f"--json {path!r} exists and is not writable"
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".fastdl-bench-"):
            pass
    except OSError as exc:
        return f"--json {path!r}: cannot write in {parent!r} ({exc.strerror or exc})"
    return None


def _write_json(console: Console, path: str, payload: dict) -> int:
    """Write atomically; if that fails after all, keep the results in a temporary file."""
    text = json.dumps(payload, indent=2, default=str)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                   prefix=".fastdl-bench-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        fd, rescue = tempfile.mkstemp(prefix="fastdl-bench-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        console.print(f"could not write {path} ({exc}); the results are in {rescue}",
                      style="red", markup=False, highlight=False)
        return 1
    console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


def _select_cases(args):
    from fastdl.bench import all_cases
    from fastdl.bench.contention import contention_cases

    if args.contention:
        cases = contention_cases(args.only)
    else:
        # --only picks from every case unless --quick is given too
        cases = all_cases(quick=args.quick or not (args.full or args.only), only=args.only)
    if not cases:
        raise ValueError(f"no benchmark case matches --only {args.only!r}; "
                         "`fastdl bench --full --list` names them all")
    return cases


def _check_bench_args(args):
    """Everything that could fail, checked before the first case runs."""
    if args.threads is not None:
        fastdl.set_num_threads(args.threads)
    if args.backend:
        registry._check_names(tuple(args.backend))
        if args.contention:
            raise ValueError("--contention measures the default backends; drop --backend")
    if args.complexity and args.contention:
        raise ValueError("--complexity and --contention are separate runs; pick one")
    # with --complexity, --only picks sweeps, not cases
    cases = [] if args.complexity else _select_cases(args)
    if args.plot:
        from fastdl._plot import pyplot
        try:
            pyplot()                           # before the run: a missing extra fails fast
        except ImportError as exc:
            raise ValueError(f"--plot: {exc}") from None
        os.makedirs(args.plot, exist_ok=True)
    if args.json:
        err = _json_path_error(args.json)
        if err:
            raise ValueError(err)
    return cases


def _header(console: Console, info: dict, width: int) -> None:
    _say(console, f"fastdl {info['version']} · {platform.processor() or platform.machine()} · "
         f"threads {fastdl.get_num_threads()} · simd {info.get('simd_active')} · "
         f"openmp {info.get('openmp')} · numpy {info['numpy']}", width)


def _progress(console: Console):
    """A progress bar on a terminal; nothing elsewhere (the rows are the progress)."""
    if not console.is_terminal:
        return contextlib.nullcontext(None)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _bench_page(out_dir, rows, backend, info, extra=()) -> str:
    """``out_dir/index.html``: the results and bars per op area, the speed-ups, the
    BiRNN's gradient flow and ``extra`` sections, with every figure beside it."""
    from fastdl import _plot
    from fastdl.bench.report_html import bench_sections, write_index
    sections = bench_sections(rows, out_dir, backend) if rows else []
    images = []
    if rows:
        images.append(_plot.ratio_bars(rows, os.path.join(out_dir, "speedups.png"), backend))
    flow = _plot.birnn_gradient_flow(os.path.join(out_dir, "birnn_gradient_flow.png"))
    sections.extend(extra)
    sections.append({"title": "Speed-ups and the BiRNN's gradient flow",
                     "text": "The speed-up of every case over the NumPy backend and PyTorch; "
                             "the norm of the BiRNN's gradient with respect to the hidden "
                             "state at each time step, going back from the loss.",
                     "images": images + [flow], "table": None})
    return write_index(out_dir, title="fastdl benchmark report", build_info=info,
                       sections=sections)


def cmd_bench(args, console: Console) -> int:
    from fastdl.bench import run_cases
    from fastdl.bench import table as tb

    cases = _check_bench_args(args)
    if args.list:
        for c in cases:
            console.print(c.name, soft_wrap=True, markup=False, highlight=False)
        return 0
    if args.contention:
        return _bench_contention(args, console, cases)
    if args.complexity:
        from fastdl import cli_complexity
        return cli_complexity.run(args, console, _header, _say, _emit, _bench_page,
                                  _write_json)
    t0 = time.perf_counter()
    info = fastdl.build_info()
    width = console.width
    fastdl_backends = set(registry.backends())
    first = (registry.get_backend_priority() + (registry.REFERENCE,))[0]
    _header(console, info, width)
    if args.wide:
        backends = sorted(fastdl_backends | {"torch"} | {p for c in cases for p in c.peers})
        table = tb.wide_table(cases, backends)
    else:
        table = tb.compact_table(width, cases)
        _say(console, f"median: time of the {first} backend; ×numpy, ×torch: their time / "
             "this time (above 1: faster); limit: this time / a plain read or copy of the "
             "same bytes. Every backend and peer: --wide; every figure: --json.", width)
    _emit(console, table.header())
    rows, met, missed = [], 0, 0
    with _progress(console) as progress:
        task = progress.add_task("benchmarking", total=len(cases)) if progress else None

        def started(case):
            if progress:
                progress.update(task, description=case.name)

        def finished(case, case_rows):
            nonlocal met, missed
            shown = case_rows if args.wide else tb.main_rows(case_rows, fastdl_backends,
                                                             registry.REFERENCE)
            for r in shown:
                met += sum(c["met"] is True for c in r.checks)
                missed += sum(c["met"] is False for c in r.checks)
            lines = (tb.wide_lines(table, case_rows) if args.wide else
                     tb.compact_lines(table, case_rows, fastdl_backends, registry.REFERENCE,
                                      first))
            _emit(progress.console if progress else console, lines)
            if progress:
                progress.advance(task)

        rows = run_cases(cases, backends=args.backend, full=args.full,
                         with_torch=not args.no_torch, rounds=args.rounds, progress=started,
                         on_result=finished)
    from fastdl.bench import qpaths_table
    side = qpaths_table.lines(rows, first)
    if side:
        _emit(console, [""] + side)
    decision = None
    if any(c.name.startswith("lora/") for c in cases):
        # the course's LoRA-or-QLoRA table at the benchmark's transformer layer, measured
        # now; before the summary, so the last line stays the targets and the total time
        from fastdl import demo_lora
        decision = demo_lora.decision_table(console, demo_lora.BENCH_SHAPE)
    elapsed = time.perf_counter() - t0
    if not any(r.backend == "torch" for r in rows):
        _say(console, "PyTorch not installed (or --no-torch): the ×torch column is empty.",
             width)
    plural = "s" if len(cases) != 1 else ""
    _say(console, f"targets: {met} met, {missed} missed · {len(cases)} case{plural} in "
         f"{elapsed:.1f} s", width)
    if args.plot:
        _say(console, f"wrote {_bench_page(args.plot, rows, first, info)}", width)
    if args.json:
        return _write_json(console, args.json, {
            "build_info": info, "full": args.full, "elapsed_s": elapsed,
            "results": [r.as_dict() for r in rows], "lora_decision": decision})
    return 0


def _bench_contention(args, console: Console, cases) -> int:
    from fastdl.bench import contention as ct
    from fastdl.bench import table as tb

    t0 = time.perf_counter()
    info = fastdl.build_info()
    width = console.width
    busy = ct.cpus()
    threads = fastdl.get_num_threads()
    _header(console, info, width)
    _say(console, f"{busy} busy processes (one per CPU). busy: time at the default {threads} "
         f"threads / time at 1 thread, with the busy processes running (goal: at most "
         f"{ct.GOAL:g}); idle: the same without them (below 1: the threads help). torch: "
         "the same for the PyTorch peer. Medians of alternating rounds.", width)
    table = tb.contention_table(width, [c.name for c in cases], args.wide)
    _emit(console, table.header())
    rows = []
    with ct.sigterm_as_interrupt(), _progress(console) as progress:
        task = progress.add_task("contention", total=len(cases)) if progress else None
        for case in cases:
            if progress:
                progress.update(task, description=case.name)
            row = ct.run_contention_case(case, budget_s=args.duration,
                                         with_torch=not args.no_torch, busy=busy)
            rows.append(row)
            _emit(progress.console if progress else console, tb.contention_lines(table, row))
            if progress:
                progress.advance(task)
    elapsed = time.perf_counter() - t0
    met = sum(r.met for r in rows)
    _say(console, f"{met} of {len(rows)} ops at most {ct.GOAL:g}× slower at the default "
         f"threads than at 1 thread under load · {elapsed:.1f} s", width)
    if not all(r.busy_held for r in rows):
        _say(console, "'?': a busy process ended before the timing did; rerun.", width)
    if args.json:
        return _write_json(console, args.json, {
            "build_info": info, "mode": "contention", "goal": ct.GOAL, "busy_processes": busy,
            "elapsed_s": elapsed, "results": [r.as_dict() for r in rows]})
    return 0


def cmd_demo(args, console: Console) -> int:
    from fastdl import demo
    return demo.run(console, None if args.no_files else args.out, train=not args.no_train)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastdl", description=fastdl.__doc__)
    p.add_argument("--version", action="version", version=f"fastdl {fastdl.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    pi = sub.add_parser("info", help="build and machine information")
    pi.add_argument("--json", action="store_true", help="print JSON")
    sub.add_parser("backends", help="table of backends x ops")
    pd = sub.add_parser("demo", help="the course's worked answers (normalization statistics; "
                                       "decoding counts, greedy, beam and exact search; BiRNN "
                                       "gradients; LoRA / QLoRA complexity, decision table, "
                                       "fine-tuning) recomputed beside its values, and its "
                                       "loose places with corrected values")
    pd.add_argument("--out", metavar="DIR", default="fastdl-demo",
                    help="where the unrolled graph (.dot, .svg with Graphviz) and the "
                         "gradient-flow plot (with matplotlib) go (default: fastdl-demo)")
    pd.add_argument("--no-files", action="store_true",
                    help="write nothing; print the graph's DOT text instead")
    pd.add_argument("--no-train", action="store_true",
                    help="skip the QLoRA fine-tuning run (a few seconds)")
    pb = sub.add_parser("bench", help="run the benchmark cases")
    mode = pb.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="the quick set (default); the total time is printed at the end")
    mode.add_argument("--full", action="store_true", help="every case, more rounds")
    pb.add_argument("--only", metavar="PATTERN",
                    help="glob or substring of case names, chosen from every case (with "
                         "--quick: from the quick set)")
    pb.add_argument("--backend", nargs="+", metavar="NAME",
                    help="backends to measure (numpy is always measured as the baseline)")
    pb.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    pb.add_argument("--plot", metavar="DIR",
                    help="also write DIR/index.html and its PNGs: results and bars per op "
                         "area, speed-ups, the BiRNN's gradient flow, with --complexity the "
                         "scaling plots (needs matplotlib: pip install 'fastdl[plot]')")
    pb.add_argument("--wide", action="store_true",
                    help="every backend, peer and column (wider than a terminal)")
    pb.add_argument("--threads", type=_int_arg("--threads", 1, _max_threads),
                    metavar="N", help="kernel threads (default: all available)")
    pb.add_argument("--rounds", type=_int_arg("--rounds", 1, lambda: 10000), metavar="N",
                    help="fixed number of timed rounds per case")
    pb.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    pb.add_argument("--list", action="store_true", help="print the case names and exit")
    pb.add_argument("--contention", action="store_true",
                    help="default threads against 1 thread, idle and with one busy "
                         "process per CPU (a representative set of ops; --only picks others)")
    pb.add_argument("--complexity", action="store_true",
                    help="every analytic count beside an instrumented run, then the log-log "
                         "slope of time against each size (decoding N, B, T; LoRA d, r, n, "
                         "h; BiRNN T, d; norm elements) beside the analytic exponent; --only "
                         "picks sweeps, --quick runs fewer points, --plot DIR adds the plots")
    pb.add_argument("--duration", type=_seconds_arg, default=1.0, metavar="S",
                    help="with --contention: seconds of timing per op, library and "
                         "condition (default 1)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    # logs and pipes: do not squeeze the info/backends tables; the bench's lines
    # fit the width ($COLUMNS, else 80)
    if not console.is_terminal and args.command != "bench":
        console = Console(width=250)
    try:
        return {"info": cmd_info, "backends": cmd_backends, "bench": cmd_bench,
                "demo": cmd_demo}[args.command](
            args, console)
    except (ValueError, TypeError) as exc:
        console.print(f"fastdl {args.command}: {exc}", style="red", markup=False,
                      highlight=False)
        return 2
    except KeyboardInterrupt:
        console.print(f"fastdl {args.command}: interrupted", style="red")
        return 130


if __name__ == "__main__":
    sys.exit(main())
