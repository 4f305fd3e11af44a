"""``fastdl bench --contention``: the ratios, and busy processes that never outlive the run."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fastdl.bench import contention as ct
from fastdl.bench.table import fmt_ratio
from fastdl.cli import main

TINY = ["--only", "decode/log_softmax/*"]       # one op, ~1 ms (16 x 50257 floats)


def _wait_gone(pids, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(ct.pid_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if ct.pid_alive(p)]


def _busy_children(parent):
    """Pids of this module's busy processes whose parent is ``parent``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ct.BUSY_MARK.encode() in cmd and ppid == parent:
            out.append(int(name))
    return out


def test_contention_prints_the_ratios_and_stops_its_processes(tmp_path, capsys):
    path = tmp_path / "c.json"
    assert main(["bench", "--contention", *TINY, "--duration", "0.05", "--json",
                 str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("case"))
    assert lines[i - 1].split() == ["fastdl", "torch"]
    assert lines[i].split() == ["case", "busy", "goal", "idle", "busy", "idle"]
    line = next(ln for ln in out.splitlines() if ln.startswith("decode/log_softmax/"))
    assert line.split()[2] in ("met", "missed")
    data = json.loads(path.read_text())
    assert data["mode"] == "contention" and data["goal"] == 1.3
    (row,) = data["results"]
    assert row["case"] == "decode/log_softmax/16x50257/float32"
    assert row["busy_processes"] == ct.cpus() == len(row["busy_pids"])
    for key in ("fastdl_idle", "fastdl_busy"):
        pair = row[key]
        assert pair["default_s"] > 0 and pair["one_s"] > 0 and pair["rounds"] >= 3
        assert pair["ratio"] == pytest.approx(pair["default_s"] / pair["one_s"])
    assert row["met"] == (row["fastdl_busy"]["ratio"] <= 1.3)
    assert line.split()[1] == fmt_ratio(row["fastdl_busy"]["ratio"])
    assert line.split()[3] == fmt_ratio(row["fastdl_idle"]["ratio"])
    try:
        import torch  # noqa: F401
        assert row["torch_idle"]["ratio"] > 0 and row["torch_busy"]["ratio"] > 0
    except ImportError:
        assert row["torch_idle"] is None
    assert _wait_gone(row["busy_pids"], timeout=0.5) == []    # stopped, not left to expire


def test_contention_set_covers_every_area():
    cases = ct.contention_cases()
    ops = {c.op for c in cases}
    for op in ("norm_stats", "layer_norm_fwd", "layer_norm_bwd", "batch_norm_fwd",
               "batch_norm_bwd", "group_norm_fwd", "group_norm_bwd", "rms_norm_fwd",
               "rms_norm_bwd", "topk", "log_softmax", "beam_topk", "quantize", "dequantize",
               "qmatmul", "birnn_bwd"):
        assert op in ops
    names = {c.name for c in cases}
    assert "decode/beam_search/B8xN50257xT32/float32" in names
    for fmt in ("int8-b64", "int4-b64", "nf4-b64-dq"):
        for n in (1, 64):
            assert f"quant/path/{fmt}/n{n}/exact" in names
    assert len(names) == len(cases)


def test_alternate_interleaves_and_restores_the_thread_count():
    calls, current = [], [4]

    def set_threads(n):
        calls.append(n)
        current[0] = n

    def fn():
        time.sleep(0.004 if current[0] == 4 else 0.001)

    pair = ct.alternate(fn, set_threads, 4, budget_s=0.0, warm_s=0.0, min_rounds=4)
    assert calls == [4, 1, 1, 4, 4, 1, 1, 4, 4] and current[0] == 4
    assert pair.rounds == 4 and pair.ratio > 2


def test_busy_processes_stop_themselves_at_their_deadline():
    procs = ct.BusyProcesses(1, lifetime_s=0.3).start()
    try:
        assert ct.pid_alive(procs.pids[0])
        procs.procs[0].wait(timeout=15)
    finally:
        procs.stop()
    assert not ct.pid_alive(procs.pids[0])


def test_busy_processes_stop_when_their_parent_dies():
    code = textwrap.dedent("""
        import os
        from fastdl.bench.contention import BusyProcesses
        procs = BusyProcesses(2, lifetime_s=300).start()
        print(*procs.pids, flush=True)
        os._exit(0)          # no cleanup at all
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    pids = [int(p) for p in out.split()]
    assert len(pids) == 2
    assert _wait_gone(pids) == []


def test_an_exception_stops_the_busy_processes(monkeypatch):
    started, real_start, real_alternate = [], ct.BusyProcesses.start, ct.alternate

    def start(self):
        started.append(self)
        return real_start(self)

    def alternate(*a, **k):
        if started:                          # the contended phase: fail in it
            raise RuntimeError("boom")
        return real_alternate(*a, **k)
    monkeypatch.setattr(ct.BusyProcesses, "start", start)
    monkeypatch.setattr(ct, "alternate", alternate)
    case = ct.contention_cases("decode/log_softmax/*")[0]
    with pytest.raises(RuntimeError, match="boom"):
        ct.run_contention_case(case, budget_s=0.01, with_torch=False)
    pids = started[0].pids
    assert len(pids) == ct.cpus() and _wait_gone(pids, timeout=0.5) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_busy_processes(sig):
    proc = subprocess.Popen([sys.executable, "-m", "fastdl", "bench", "--contention", *TINY,
                             "--duration", "3", "--no-torch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, pids = time.monotonic() + 60, []
        while not pids and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            pids = _busy_children(proc.pid)
        assert pids, "the busy processes never started"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "Traceback" not in err
    assert _wait_gone(pids, timeout=1.0) == []
