"""A benchmark case: one op on fixed inputs, with the bytes and flops it must cost."""
from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable


def case_modules() -> list[str]:
    """The modules that register cases on import: every ``fastdl/bench/cases_*.py``
    (a new area adds its file; nothing lists it)."""
    import fastdl.bench as pkg
    return sorted(f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
                  if m.name.startswith("cases_"))


@dataclass
class Case:
    name: str                                   # unique, e.g. "norm_stats/batch/64x256x1024/f32"
    op: str                                     # registry op the case measures
    setup: Callable[[], dict]                   # builds the inputs once (deterministic)
    call: Callable[[dict, str], Any]            # call(inputs, backend_name) runs the public API
    bytes_read: int                             # bytes the op must read at the least
    bytes_written: int                          # bytes it must write at the least
    flops: int = 0
    # multiply-adds the op must do; when set, every row reports GMAC/s = macs / median
    macs: int = 0
    torch: Callable[[dict], Callable[[], Any]] | None = None   # inputs -> thunk running torch
    quick: bool = True                          # part of --quick
    # backend -> {"vs_numpy": x, "vs_torch": x, "vs_limit": x (at most), "vs:PEER": x,
    #             "max:METRIC": x (at most)}
    targets: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    # other named peers timed with the rest: name -> (inputs -> thunk)
    peers: dict = field(default_factory=dict)
    # extra figures per backend, measured after the timing: (inputs, backend) -> {name: value}
    metrics: Callable[[dict, str], dict] | None = None
    # the memory-traffic limit's thunks, when not plain streams of bytes_read/bytes_written:
    # inputs -> {name: thunk}
    limit: Callable[[dict], dict] | None = None
    # untimed calls before each contender's timed burst (None: the runner's default);
    # longer where a peer leaves threads spinning (OpenBLAS spins ~0.1 s after a call)
    warm_s: float | None = None
    # time the NumPy backend too (False where its reference would take seconds a call
    # and say nothing the peers do not: the opt-in paths' float64 references at many rows)
    reference: bool = True


_CASES: dict[str, Case] = {}


def register(case: Case) -> Case:
    if case.name in _CASES:
        raise ValueError(f"benchmark case {case.name!r} is already registered")
    _CASES[case.name] = case
    return case


def matches(name: str, pattern: str | None) -> bool:
    """``--only`` semantics: a glob of the whole name, or a substring of it."""
    return not pattern or fnmatch.fnmatch(name, pattern) or pattern in name


def get_case(name: str) -> Case:
    """The registered case of that exact name."""
    all_cases()
    try:
        return _CASES[name]
    except KeyError:
        raise ValueError(f"no benchmark case named {name!r}") from None


def all_cases(*, quick: bool | None = None, only: str | None = None, op: str | None = None):
    """Registered cases, filtered: ``quick`` (True: quick set only), ``only``
    (glob or substring of the name), ``op``."""
    for mod in case_modules():
        importlib.import_module(mod)
    out = []
    for case in _CASES.values():
        if quick and not case.quick:
            continue
        if op is not None and case.op != op:
            continue
        if not matches(case.name, only):
            continue
        out.append(case)
    return out
