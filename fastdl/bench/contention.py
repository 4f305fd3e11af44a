"""``fastdl bench --contention``: the default thread count against one thread,
on an idle machine and with one busy process per CPU.

On a machine whose cores are busy with other work (a shared CI runner, a
worker beside other workers) a multi-threaded kernel can be slower than the
same kernel on one thread: its threads wait at barriers for one that the
scheduler has preempted.  For every op this measures, in alternating rounds
(default, 1 thread, 1 thread, default, ...), the median time at the default
thread count and at one thread, first idle and then under load, for fastdl
and for PyTorch's peer of the same case when PyTorch is installed.  Goal:
under load no op at the default settings is more than ``GOAL`` times slower
than at one thread.

The busy processes are fresh interpreters (never forks of this process) that
spin in pure Python.  Each stops by itself at its deadline or as soon as its
parent is gone, whatever happens here; the parent stops them at the end of
every contended phase, also on an exception, Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from fastdl._threads import get_num_threads, set_num_threads
from fastdl.bench import runner
from fastdl.bench.case import Case, all_cases, get_case, matches

GOAL = 1.3                    # contended default time / contended 1-thread time, at most
BUSY_MARK = "fastdl-bench-busy"

# The busy loop checks its clock and its parent every ~1 ms of spinning.
_BUSY_CODE = r"""
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_DFL)    # a terminal's Ctrl-C reaches us too: no traceback
try:                                            # Linux: SIGTERM from the kernel if the parent dies
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except Exception:
    pass
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
sys.stdout.write("ready\n")
sys.stdout.flush()
x = 0
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(20000):
        x += 1
"""


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie that nobody reaped does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class BusyProcesses:
    """``n`` processes spinning on the CPU for at most ``lifetime_s`` seconds."""

    def __init__(self, n: int, lifetime_s: float):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if not lifetime_s > 0:
            raise ValueError(f"lifetime_s must be > 0, got {lifetime_s!r}")
        self.n, self.lifetime_s = n, float(lifetime_s)
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> "BusyProcesses":
        try:
            for _ in range(self.n):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _BUSY_CODE, str(os.getpid()),
                     repr(self.lifetime_s), BUSY_MARK],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, close_fds=True))
            for p in self.procs:              # every one spinning before any timing starts
                if p.stdout.readline() != b"ready\n":
                    raise RuntimeError(f"busy process {p.pid} did not start "
                                       f"(exit status {p.poll()})")
        except BaseException:
            self.stop()
            raise
        return self

    def running(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM/SIGHUP raise KeyboardInterrupt meanwhile, so ``finally`` blocks
    (which stop the busy processes) run; the previous handlers come back after."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    saved = {}
    try:
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                saved[sig] = signal.signal(sig, handler)
    except ValueError:       # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


# --- the ops -------------------------------------------------------------------

def _log_softmax_case(B=16, N=50257) -> Case:
    from fastdl.decode import log_softmax

    def setup():
        x = (np.random.default_rng(0).standard_normal((B, N), dtype=np.float32) * 3)
        return {"x": x, "out": np.empty_like(x)}

    def torch_peer(inp):
        import torch
        x = torch.from_numpy(inp["x"])
        return lambda: torch.log_softmax(x, -1)

    return Case(name=f"decode/log_softmax/{B}x{N}/float32", op="log_softmax", setup=setup,
                call=lambda inp, backend: log_softmax(inp["x"], out=inp["out"], backend=backend),
                bytes_read=B * N * 4, bytes_written=B * N * 4, flops=4 * B * N, torch=torch_peer,
                quick=False)


def _dequantize_case(fmt="int4-b64") -> Case:
    from fastdl.bench import cases_quant
    from fastdl.quant import dequantize
    D = cases_quant.D

    def setup():
        return {"q": cases_quant._q(fmt), "out": np.empty((D, D), np.float32)}

    return Case(name=f"quant/dequantize/{fmt}/{D}x{D}/float32", op="dequantize", setup=setup,
                call=lambda inp, backend: dequantize(inp["q"], out=inp["out"], backend=backend),
                bytes_read=cases_quant._nbytes(fmt), bytes_written=D * D * 4, flops=D * D,
                quick=False)


# registered benchmark cases, by name, covering every area
REGISTERED_SET = [
    "norm_stats/batch/64x256x1024/float32", "norm_stats/layer/64x256x1024/float32",
    *(f"norm/{kind}/{d}/{shape}/float32" for kind, shape in
      (("layer", "4096x4096"), ("batch", "64x256x1024"), ("group32", "64x256x1024"),
       ("rms", "4096x4096")) for d in ("forward", "backward")),
    "decode/topk/n1e6/k10/float32", "decode/beam_topk/B16xN50257/float32",
    "decode/beam_search/B8xN50257xT32/float32",
    "quant/quantize/int4-b64/4096x4096/float32",
    *(f"quant/path/{fmt}/n{n}/exact" for fmt in ("int8-b64", "int4-b64", "nf4-b64-dq")
      for n in (1, 64)),
    "rnn/birnn/loss+grads/T64xB32xd128/float32",
]
_EXTRA = [_log_softmax_case, _dequantize_case]


def contention_cases(only: str | None = None) -> list[Case]:
    """The representative set; with ``only``: every case (registered or this
    module's own) whose name matches, as ``--only`` does."""
    extra = [make() for make in _EXTRA]
    if only is None:
        return [get_case(n) for n in REGISTERED_SET] + extra
    return [c for c in all_cases() + extra if matches(c.name, only)]


# --- measuring -----------------------------------------------------------------

@dataclass
class Pair:
    """Median times at the default thread count and at one thread."""
    default_s: float
    one_s: float
    rounds: int

    @property
    def ratio(self) -> float:
        return self.default_s / self.one_s


@dataclass
class ContentionRow:
    case: str
    op: str
    threads: int                     # the default thread count measured against 1
    busy_processes: int
    fastdl_idle: Pair
    fastdl_busy: Pair
    torch_idle: Pair | None = None
    torch_busy: Pair | None = None
    busy_held: bool = True           # every busy process ran through the contended timing
    busy_pids: list = field(default_factory=list)
    goal: float = GOAL

    @property
    def met(self) -> bool:
        return self.fastdl_busy.ratio <= self.goal

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("fastdl_idle", "fastdl_busy", "torch_idle", "torch_busy"):
            if d[k] is not None:
                d[k]["ratio"] = getattr(self, k).ratio
        d["met"] = self.met
        return d


def alternate(fn, set_threads, threads: int, *, budget_s: float, warm_s: float,
              min_rounds: int = 3, max_rounds: int = 60) -> Pair:
    """Time ``fn`` at ``threads`` and at 1 thread in alternating bursts (ABBA
    order, so a drift in the machine's load charges both alike)."""
    samples = ([], [])                      # at ``threads``, at 1
    start, rounds = time.perf_counter(), 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while rounds < max_rounds and (rounds < min_rounds
                                       or time.perf_counter() - start < budget_s):
            for i in ((0, 1) if rounds % 2 == 0 else (1, 0)):
                set_threads((threads, 1)[i])
                samples[i].extend(runner._burst(fn, warm_s))
            rounds += 1
    finally:
        set_threads(threads)
        if gc_was:
            gc.enable()
    return Pair(statistics.median(samples[0]), statistics.median(samples[1]), rounds)


def run_contention_case(case: Case, *, budget_s: float = 1.0, with_torch: bool = True,
                        busy: int | None = None) -> ContentionRow:
    threads = get_num_threads()
    busy = cpus() if busy is None else busy
    inputs = case.setup()
    warm = runner.WARM_S if case.warm_s is None else case.warm_s
    call = lambda: case.call(inputs, None)    # noqa: E731 - the default settings
    torch = runner._torch() if with_torch and case.torch is not None else None
    tcall = case.torch(inputs) if torch is not None else None
    torch_threads = torch.get_num_threads() if torch is not None else None

    def measure():
        fd = alternate(call, set_num_threads, threads, budget_s=budget_s, warm_s=warm)
        if tcall is None:
            return fd, None
        try:
            pt = alternate(tcall, torch.set_num_threads, threads, budget_s=budget_s,
                           warm_s=warm)
        finally:
            torch.set_num_threads(torch_threads)
        return fd, pt

    fd_idle, pt_idle = measure()
    # generous: the processes stop themselves only if this process is stuck
    with BusyProcesses(busy, lifetime_s=120 + 20 * budget_s) as procs:
        fd_busy, pt_busy = measure()
        held = procs.running() == busy
    return ContentionRow(case=case.name, op=case.op, threads=threads, busy_processes=busy,
                         fastdl_idle=fd_idle, fastdl_busy=fd_busy, torch_idle=pt_idle,
                         torch_busy=pt_busy, busy_held=held, busy_pids=procs.pids)
