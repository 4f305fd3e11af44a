"""``fastdl bench`` output: fitted to the width, never cut, a line per case as it
finishes, and bad arguments rejected before any case runs."""
import json
import os
import subprocess
import sys
import time

import pytest

from fastdl.bench import all_cases, runner
from fastdl.bench import table as tb
from fastdl.bench.runner import Row, _check_targets
from fastdl.cli import main

# two fast cases of the quick set (a topk over 10^6 floats, k = 10 and 100)
TWO = ["--quick", "--only", "decode/topk/n1e6/k10", "--rounds", "1"]
NAMES = ["decode/topk/n1e6/k10/float32", "decode/topk/n1e6/k100/float32"]


def _fake_rows(case, peer_ratio=2.0):
    rows = []
    for backend in ("cython", "numpy"):
        targets = case.targets.get(backend, {})
        row = Row(case=case.name, op=case.op, backend=backend, median_s=0.0291, gbps=1.0,
                  vs_numpy=15.911 if backend == "cython" else None, vs_torch=1234.5,
                  vs_limit=1.7, limit_s=0.001, limit_kind="read", rounds=1, targets=targets,
                  vs_peers={p: peer_ratio for p in case.peers},
                  metrics={"bits/param": 4.1, "overhead/beam_topk": 1.5})
        _check_targets(row)
        rows.append(row)
    return rows


@pytest.mark.parametrize("width", [60, 80, 120])
def test_compact_table_fits_every_case_and_cuts_nothing(width):
    cases = all_cases()
    table = tb.compact_table(width, cases)
    lines = list(table.header())
    for case in cases:
        lines += tb.compact_lines(table, _fake_rows(case), {"cython", "numpy"}, "numpy",
                                  "cython")
    assert all(len(ln) <= width for ln in lines), max(lines, key=len)
    text = "\n".join(lines)
    assert "…" not in text
    for col in ("case", "median", "×numpy", "×torch", "target", "result"):
        assert col in lines[0]
    assert "29.1 ms" in text and "15.9" in text and "1234" in text
    case_w = table.columns[0].width
    for case in cases:        # the name is whole once its wrapped lines are joined up
        rows = tb.compact_lines(table, _fake_rows(case), {"cython", "numpy"}, "numpy", "cython")
        assert "".join(ln[:case_w].strip() for ln in rows) == case.name


def test_targets_are_short():
    case = next(c for c in all_cases(only="quant/path/int4-b64/n512/exact"))
    assert case.targets["cython"]["vs:numpy x@W f32"] == pytest.approx(1 / 1.15)
    table = tb.compact_table(120, [case])
    text = "\n".join(tb.compact_lines(table, _fake_rows(case), {"cython", "numpy"}, "numpy",
                                      "cython"))
    assert ">= 0.87" in text and "0.8695" not in text
    row = _fake_rows(case, peer_ratio=0.5)[0]
    assert "vs:numpy x@W f32 0.50 (target >= 0.87)" in row.missed


def test_number_formats():
    assert [tb.fmt_time(t) for t in (2.5e-8, 1.904e-4, 0.0291, 15.911, 250.0)] == \
        ["25.0 ns", "190 µs", "29.1 ms", "15.9 s", "250 s"]
    assert [tb.fmt_ratio(x) for x in (0.2712, 5.123, 74.84, 1234.5, 25000.0, None)] == \
        ["0.27", "5.12", "74.8", "1234", "2e+04", "-"]
    assert runner.fmt_goal(1 / 1.15) == "0.87" and runner.fmt_goal(3.0) == "3"
    assert tb.wrap("norm/instance/backward/64x256x1024/float32", 24) == \
        ["norm/instance/backward/", "  64x256x1024/float32"]
    assert tb.wrap("short", 24) == ["short"]
    assert all(len(ln) <= 10 for ln in tb.wrap("abcdefghijklmnopqrstuvwxyz/x", 10))


def _run_piped(args, columns):
    env = dict(os.environ, COLUMNS=str(columns))
    env.pop("FASTDL_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "fastdl", "bench", *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("columns, extra", [(80, []), (120, ["--no-torch"])])
def test_piped_output_fits_the_width(columns, extra):
    proc = _run_piped(TWO + extra, columns)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(ln) <= columns for ln in lines), max(lines, key=len)
    assert "…" not in proc.stdout and "\x1b[" not in proc.stdout    # no cuts, no colours
    head = next(ln for ln in lines if ln.startswith("case"))
    for col in ("median", "×numpy", "×torch", "target", "result"):
        assert col in head
    for name in NAMES:                      # the first line of each case's row
        assert any(ln.startswith(name[:20]) for ln in lines)
    assert ">= 3" in proc.stdout and ("met" in proc.stdout or "missed" in proc.stdout)
    assert "targets:" in lines[-1] and "2 cases in" in lines[-1]


def test_wide_view_has_every_backend_and_column(capsys):
    assert main(["bench", "--only", "decode/topk/n1e6/k10/*", "--rounds", "1", "--no-torch",
                 "--wide"]) == 0
    out = capsys.readouterr().out
    head = next(ln for ln in out.splitlines() if ln.startswith("case"))
    for col in ("backend", "GB/s", "÷limit", "limit", "targets", "other"):
        assert col in head
    rows = [ln for ln in out.splitlines() if ln.startswith("decode/topk")]
    assert {ln.split()[1] for ln in rows} == {"cython", "numpy", "np.argpartition+sort"}


def test_piped_lines_come_as_each_case_finishes():
    """The first case's line is readable while the second case still runs."""
    env = dict(os.environ, COLUMNS="80")
    proc = subprocess.Popen([sys.executable, "-m", "fastdl", "bench", "--quick", "--only",
                             "decode/topk/n1e6/k10", "--rounds", "4", "--no-torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        for line in proc.stdout:
            if line.startswith("decode/topk/n1e6/k10/"):
                assert proc.poll() is None      # the k100 case has not run yet
                break
        else:
            pytest.fail("no line for the first case")
        rest = proc.stdout.read()
        assert "decode/topk/n1e6/k100/" in rest
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def no_case_may_run(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a benchmark case ran")
    monkeypatch.setattr(runner, "run_case", boom)
    monkeypatch.setattr("fastdl.bench.contention.run_contention_case", boom)


@pytest.mark.parametrize("argv", [
    ["--threads", "0"], ["--threads", "-3"], ["--threads", "100000"], ["--threads", "two"],
    ["--rounds", "0"], ["--contention", "--duration", "0"], ["--duration", "1e9"],
])
def test_bad_numbers_are_usage_errors(argv, no_case_may_run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", *TWO, *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert argv[-2] in err and "must be" in err


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp: tmp / "no-such-dir" / "r.json", "does not exist"),
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: "/proc/fastdl-bench.json", "cannot write"),
])
def test_unwritable_json_path_fails_before_running(make_path, message, tmp_path,
                                                   no_case_may_run, capsys):
    assert main(["bench", *TWO, "--json", str(make_path(tmp_path))]) == 2
    out = " ".join(capsys.readouterr().out.split())      # the message wraps at the width
    assert message in out and "decode/topk" not in out


@pytest.mark.parametrize("argv, message", [
    (["--only", "no-such-case"], "no benchmark case matches"),
    (["--contention", "--only", "no-such-case"], "no benchmark case matches"),
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--contention", "--backend", "cython"], "drop --backend"),
])
def test_bad_selection_fails_before_running(argv, message, no_case_may_run, capsys):
    assert main(["bench", *argv]) == 2
    assert message in " ".join(capsys.readouterr().out.split())


def test_bad_arguments_return_at_once():
    """Checked up front: no case output and no time spent (a case takes a second)."""
    t0 = time.perf_counter()
    proc = _run_piped([*TWO, "--json", "/no/such/dir/r.json"], 80)
    assert proc.returncode == 2
    out = " ".join(proc.stdout.split())
    assert "does not exist" in out and "decode/topk" not in out
    assert time.perf_counter() - t0 < 30


def test_results_survive_a_failed_json_write(tmp_path, monkeypatch, capsys):
    """Should the write fail after the run after all, the results go to a temporary file."""
    path = tmp_path / "r.json"

    def fail(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", fail)
    assert main(["bench", "--only", "decode/topk/n1e6/k10/*", "--rounds", "1", "--no-torch",
                 "--json", str(path)]) == 1
    out = capsys.readouterr().out.replace("\n", " ")
    assert "No space left on device" in out
    rescue = out.split("the results are in ")[1].split()[0]
    try:
        data = json.loads(open(rescue).read())
        assert {r["backend"] for r in data["results"]} >= {"cython", "numpy"}
    finally:
        os.unlink(rescue)
    assert not path.exists()


def test_list_names_the_cases(no_case_may_run, capsys):
    assert main(["bench", "--full", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert names == [c.name for c in all_cases()]


def test_total_time_is_printed(capsys):
    assert main(["bench", *TWO[:3], "--rounds", "1", "--no-torch"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("targets: ") and last.endswith(" s") and "2 cases in" in last
