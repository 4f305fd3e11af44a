"""Run benchmark cases: interleaved rounds, medians, ratios, targets."""
from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from fastdl import registry
from fastdl.bench.case import Case
from fastdl.bench.traffic import limit_thunks


@dataclass
class Row:
    case: str
    op: str
    backend: str                   # fastdl backend name, or "torch"
    median_s: float
    gbps: float
    vs_numpy: float | None         # numpy time / this time (speed-up)
    vs_torch: float | None         # torch time / this time
    vs_limit: float | None         # this time / memory-traffic limit time
    limit_s: float | None
    limit_kind: str | None
    rounds: int
    targets: dict = field(default_factory=dict)
    missed: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    vs_peers: dict = field(default_factory=dict)    # peer name -> peer time / this time
    metrics: dict = field(default_factory=dict)     # case-specific figures
    # one entry per target: {"key", "goal", "at_most", "got", "met"}; got/met are
    # None when this row lacks the figure (e.g. no PyTorch for a vs_torch target)
    checks: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)


def _torch():
    try:
        import torch
    except Exception:  # noqa: BLE001 - any import failure means "no torch peer"
        return None
    return torch


def _time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# Untimed calls before each timed burst.  After ~90 ms of a single-threaded
# peer, a 2 ms OpenMP kernel here ran ~3x slower for its first ~20 ms of calls
# (the idle core ramping up), which would charge the machine's wake-up to
# whoever comes after a slow peer.
WARM_S = 0.03
BURST = 5            # timed calls per contender per round (at most)
BURST_S = 0.05       # ... or until this much time has passed


def _burst(fn: Callable[[], object], warm_s: float = WARM_S) -> list[float]:
    t0 = time.perf_counter()
    fn()
    while time.perf_counter() - t0 < warm_s:
        fn()
    out: list[float] = []
    t0 = time.perf_counter()
    while len(out) < BURST and (not out or time.perf_counter() - t0 < BURST_S):
        out.append(_time_once(fn))
    return out


def measure(thunks: dict[str, Callable[[], object]], *, min_rounds: int, max_rounds: int,
            budget_s: float, warm_s: float = WARM_S) -> tuple[dict[str, float], int]:
    """Median time of each thunk, timed in interleaved rounds (a noisy machine
    slows all of them alike) until ``budget_s`` is spent or ``max_rounds`` done.

    In each round every contender (kernels and memory-limit streams alike)
    runs untimed for WARM_S, then is timed in a short burst: its data is as
    warm as the caches allow and the cores are awake, whoever ran before."""
    samples, rounds = sample_rounds(thunks, min_rounds=min_rounds, max_rounds=max_rounds,
                                    budget_s=budget_s, warm_s=warm_s)
    return {k: statistics.median(v) for k, v in samples.items()}, rounds


def sample_rounds(thunks: dict, *, min_rounds: int, max_rounds: int, budget_s: float,
                  warm_s: float) -> tuple[dict, int]:
    """Every timed sample of each thunk, from ``measure``'s interleaved rounds
    (garbage collection off), and the number of rounds."""
    samples: dict[str, list[float]] = {k: [] for k in thunks}
    start = time.perf_counter()
    rounds = 0
    gc_was = gc.isenabled()
    gc.disable()
    try:
        while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
            for name, fn in thunks.items():
                samples[name].extend(_burst(fn, warm_s))
            rounds += 1
    finally:
        if gc_was:
            gc.enable()
    return samples, rounds


def _backends_for(case: Case, wanted: Iterable[str] | None) -> list[str]:
    infos = registry.backends()
    names = [n for n, info in infos.items() if info.loaded and case.op in info.ops]
    if wanted:
        names = [n for n in names if n in wanted or n == registry.REFERENCE]
    if not case.reference and len(names) > 1:
        names = [n for n in names if n != registry.REFERENCE]
    return names


def run_case(case: Case, *, backends: Iterable[str] | None = None, full: bool = False,
             with_torch: bool = True, rounds: int | None = None) -> list[Row]:
    inputs = case.setup()
    thunks: dict[str, Callable[[], object]] = {}
    for name in _backends_for(case, backends):
        thunks[name] = (lambda n: lambda: case.call(inputs, n))(name)
    torch = _torch() if with_torch else None
    if torch is not None and case.torch is not None:
        from fastdl._threads import get_num_threads
        torch.set_num_threads(get_num_threads())
        thunks["torch"] = case.torch(inputs)
    for name, make in case.peers.items():
        thunks["peer:" + name] = make(inputs)
    limits = (case.limit(inputs) if case.limit is not None
              else limit_thunks(case.bytes_read, case.bytes_written))
    for k, fn in limits.items():
        thunks["limit:" + k] = fn
    warm = WARM_S if case.warm_s is None else case.warm_s
    if rounds is not None:
        med, n = measure(thunks, min_rounds=rounds, max_rounds=rounds, budget_s=0.0, warm_s=warm)
    elif full:
        med, n = measure(thunks, min_rounds=10, max_rounds=200, budget_s=4.0, warm_s=warm)
    else:
        med, n = measure(thunks, min_rounds=3, max_rounds=40, budget_s=1.0, warm_s=warm)

    limit_kind = min(limits, key=lambda k: med["limit:" + k]) if limits else None
    limit_s = med["limit:" + limit_kind] if limit_kind else None
    t_np, t_torch = med.get(registry.REFERENCE), med.get("torch")
    nbytes = case.bytes_read + case.bytes_written
    peers = {k[5:]: v for k, v in med.items() if k.startswith("peer:")}
    rows = []
    for name, t in med.items():
        if name.startswith("limit:"):
            continue
        peer = name.startswith("peer:")
        name = name[5:] if peer else name
        targets = case.targets.get(name, {})
        row = Row(
            case=case.name, op=case.op, backend=name, median_s=t, gbps=nbytes / t / 1e9,
            vs_numpy=t_np / t if t_np and name != registry.REFERENCE else None,
            vs_torch=t_torch / t if t_torch and name != "torch" else None,
            vs_limit=t / limit_s if limit_s else None, limit_s=limit_s, limit_kind=limit_kind,
            rounds=n, targets=targets, params=case.params,
            vs_peers={p: tp / t for p, tp in peers.items() if not (peer and p == name)},
        )
        if case.metrics is not None and not peer and name in registry.backends():
            row.metrics = case.metrics(inputs, name)
        if case.macs:
            row.metrics["GMAC/s"] = case.macs / t / 1e9
        _check_targets(row)
        rows.append(row)
    return rows


def _target_value(row: Row, key: str):
    """(value, at_most) of a target key, or (None, _) when this row lacks it."""
    if key.startswith("vs:"):
        return row.vs_peers.get(key[3:]), False
    if key.startswith("max:"):
        return row.metrics.get(key[4:]), True
    return getattr(row, key), key == "vs_limit"


def fmt_goal(goal: float) -> str:
    """A target as a reader wants it: 1/1.15 -> '0.87', 3.0 -> '3'."""
    return f"{goal:.3g}"


def _check_targets(row: Row) -> None:
    for key, goal in row.targets.items():
        got, at_most = _target_value(row, key)
        if got is None or math.isnan(got):
            row.checks.append({"key": key, "goal": goal, "at_most": at_most, "got": None,
                               "met": None})
            continue
        met = got <= goal if at_most else got >= goal
        row.checks.append({"key": key, "goal": goal, "at_most": at_most, "got": got, "met": met})
        if not met:
            row.missed.append(f"{key} {got:.2f} (target {'<=' if at_most else '>='} "
                              f"{fmt_goal(goal)})")


def run_cases(cases: list[Case], *, backends=None, full=False, with_torch=True, rounds=None,
              progress=None, on_result=None) -> list[Row]:
    """Run every case; ``progress(case)`` is called before each and
    ``on_result(case, rows)`` after each, so callers can report as cases finish."""
    rows: list[Row] = []
    for case in cases:
        if progress is not None:
            progress(case)
        case_rows = run_case(case, backends=backends, full=full, with_torch=with_torch,
                             rounds=rounds)
        if on_result is not None:
            on_result(case, case_rows)
        rows.extend(case_rows)
    return rows
