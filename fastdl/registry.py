"""Backend registry: discovery, selection, listing and dispatch of ops.

Resolution order for one call of op X:

1. ``backend=`` keyword of the call: that backend only, no fallback;
2. ``use_backend`` scopes, innermost first (a scope with ``only=True`` ends
   the search); a scope may be limited to some ops;
3. the global priority (``set_backend``, env ``FASTDL_BACKEND``);
4. ``numpy``, the reference, always last.

Ops are the ``OpSpec`` objects of ``fastdl.ops`` (a name is looked up there;
unknown names are rejected without importing any plugin).  A backend's
functions must take their spec's arguments (checked when it loads) and run
behind the spec's argument check.  A backend that lacks X or declines the call
(its ``can_run`` returns a reason) is skipped, logged at DEBUG on logger ``fastdl.dispatch``; with env
``FASTDL_STRICT=1`` a skip raises instead.  The ordered candidates per
(op, scopes, registry version) are cached, so a call costs a dict lookup plus
the ``can_run`` checks.
"""
from __future__ import annotations

import contextvars
import importlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from fastdl import ops as _ops
from fastdl._validate import check_flag

__all__ = [
    "Backend", "BackendInfo", "BackendNotImplementedError", "backends", "set_backend",
    "use_backend", "which_backend", "register_backend", "ENTRY_POINT_GROUP",
]

ENTRY_POINT_GROUP = "fastdl.backends"
REFERENCE = "numpy"
_BUILTIN = {
    "cython": "fastdl._backends.cython:backend",
    "numpy": "fastdl._backends.numpy:backend",
}

log = logging.getLogger("fastdl.dispatch")


class BackendNotImplementedError(NotImplementedError):
    """No backend (or not the one asked for) can run this op for this call."""

    def __init__(self, op: str, backend: str, reason: str):
        self.op, self.backend, self.reason = op, backend, reason
        super().__init__(f"backend {backend!r} cannot run op {op!r}: {reason}")


@dataclass(frozen=True)
class Backend:
    """Simple backend object: ``name``, ``ops`` (op name -> callable), optional ``can_run``."""

    name: str
    ops: Mapping[str, Callable]
    can_run: Callable[..., Any] | None = None


@dataclass(frozen=True)
class BackendInfo:
    """What ``fastdl.backends()`` reports for one backend."""

    name: str
    source: str                 # "builtin", "entry point pkg.mod:factory", "register_backend"
    loaded: bool
    error: str | None
    ops: tuple[str, ...]

    @property
    def status(self) -> str:
        return "error" if self.error else ("loaded" if self.loaded else "not loaded")


@dataclass
class _Slot:
    name: str
    source: str
    target: str | None = None          # "module:attr" to load lazily
    obj: Any = None
    error: str | None = None
    ops: Mapping[str, Callable] = field(default_factory=dict)   # checked op functions


@dataclass(frozen=True)
class _Scope:
    names: tuple[str, ...]
    ops: frozenset[str] | None
    only: bool
    coerce: bool

    def applies(self, op: str) -> bool:
        return self.ops is None or op in self.ops


@dataclass
class _State:
    slots: dict[str, _Slot] = field(default_factory=dict)
    priority: tuple[str, ...] = ()
    per_op: dict[str, tuple[str, ...]] = field(default_factory=dict)
    strict: bool = False
    discovered: bool = False
    version: int = 0


_lock = threading.RLock()
_state = _State()
_scopes: contextvars.ContextVar[tuple[_Scope, ...]] = contextvars.ContextVar(
    "fastdl_backend_scopes", default=())
_cache: dict[tuple, tuple] = {}


# ---------------------------------------------------------------- discovery

def _changed() -> None:
    _state.version += 1
    _cache.clear()


def _discover() -> None:
    """Know every backend name (built-ins and entry points) without importing them."""
    if _state.discovered:
        return
    with _lock:
        if _state.discovered:
            return
        for name, target in _BUILTIN.items():
            _state.slots.setdefault(name, _Slot(name, "builtin", target))
        try:
            # imported here, not at import time: importlib.metadata costs more than the rest
            # of ``import fastdl``, and only the first op or listing needs the entry points
            from importlib import metadata
            eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception as exc:  # noqa: BLE001 - broken metadata must not break import
            warnings.warn(f"fastdl: could not read entry points: {exc}", RuntimeWarning)
            eps = ()
        for ep in eps:
            if ep.name in _state.slots:
                continue
            _state.slots[ep.name] = _Slot(ep.name, f"entry point {ep.value}", ep.value)
        _configure_from_env()
        _state.discovered = True    # only now: other threads must not plan before configuration
        _changed()


def _load(slot: _Slot) -> None:
    if slot.obj is not None or slot.error is not None or slot.target is None:
        return
    with _lock:
        if slot.obj is not None or slot.error is not None:
            return
        try:
            mod_name, _, attr = slot.target.partition(":")
            obj = importlib.import_module(mod_name)
            for part in filter(None, attr.split(".")):
                obj = getattr(obj, part)
            if not hasattr(obj, "ops") and callable(obj):
                obj = obj()            # a factory
            checked_ops = _check_backend(obj)
            if obj.name != slot.name:
                raise ValueError(f"entry point {slot.name!r} returned a backend named {obj.name!r}")
            slot.obj, slot.ops = obj, checked_ops
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not raised
            slot.error = f"{type(exc).__name__}: {exc}"
            if slot.source != "builtin":
                warnings.warn(f"fastdl: backend {slot.name!r} failed to load: {slot.error}",
                              RuntimeWarning, stacklevel=3)
            log.debug("backend %r failed to load: %s", slot.name, slot.error)
        _changed()


def _check_backend(obj: Any) -> dict[str, Callable]:
    """The backend's ops behind their specs' checks, or TypeError saying what is wrong."""
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"a backend needs a non-empty str 'name', got {name!r}")
    ops = getattr(obj, "ops", None)
    if not isinstance(ops, Mapping):
        raise TypeError(f"backend {name!r}: 'ops' must be a mapping of op name to callable, "
                        f"got {type(ops).__name__}")
    bad = [k for k, v in ops.items() if not isinstance(k, str) or not callable(v)]
    if bad:
        raise TypeError(f"backend {name!r}: ops {bad!r} are not str -> callable")
    can_run = getattr(obj, "can_run", None)
    if can_run is not None and not callable(can_run):
        raise TypeError(f"backend {name!r}: 'can_run' must be callable or None")
    unknown = sorted(k for k in ops if k not in _ops.SPECS)
    if unknown:
        raise TypeError(f"backend {name!r}: ops {unknown} have no spec; a backend that brings "
                        "an op of its own defines it first with fastdl.ops.define(OpSpec(...)); "
                        f"known ops: {', '.join(_ops.names())}")
    out = {}
    for op, fn in ops.items():
        try:
            out[op] = _ops.checked(op, fn)
        except TypeError as exc:
            raise TypeError(f"backend {name!r}, op {op!r}: {exc}") from None
    return out


# ---------------------------------------------------------------- names

def _known_names() -> list[str]:
    _discover()
    return list(_state.slots)


def _check_names(names, what: str = "backend") -> tuple[str, ...]:
    if len(names) == 1 and isinstance(names[0], (list, tuple)):
        names = tuple(names[0])
    known = _known_names()
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"{what} names must be str, got {n!r} ({type(n).__name__})")
        if n not in known:
            raise ValueError(f"unknown {what} {n!r}; known backends: {', '.join(known)}")
    return tuple(names)


def _check_op(op) -> str:
    """The op's name; unknown names are a ValueError (no plugin is imported to look)."""
    _discover()
    return _ops.get(op).name


def _check_ops(ops) -> frozenset[str] | None:
    if ops is None:
        return None
    if isinstance(ops, str):
        ops = (ops,)
    return frozenset(_check_op(op) for op in ops)


def _configure_from_env() -> None:
    """Read FASTDL_BACKEND and FASTDL_STRICT (at discovery, or again in tests)."""
    raw = os.environ.get("FASTDL_BACKEND", "")
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in _state.slots]
    if unknown:
        warnings.warn(f"FASTDL_BACKEND names unknown backends {unknown}; known: "
                      f"{', '.join(_state.slots)}", RuntimeWarning)
    names = tuple(n for n in names if n in _state.slots)
    _state.priority = names or tuple(n for n in _BUILTIN if n != REFERENCE)
    _state.per_op = {}
    _state.strict = os.environ.get("FASTDL_STRICT", "").strip().lower() in ("1", "true", "yes", "on")
    _changed()


def _reset() -> None:
    """Forget all state and rediscover (tests use this after changing env or sys.path)."""
    global _state
    with _lock:
        _state = _State()
        _changed()


# ---------------------------------------------------------------- public API

def backends() -> dict[str, BackendInfo]:
    """Every known backend (loading each), with status, load error and ops."""
    _discover()
    out = {}
    for name, slot in list(_state.slots.items()):
        _load(slot)
        out[name] = BackendInfo(name, slot.source, slot.obj is not None, slot.error,
                                tuple(sorted(slot.ops)))
    return out


def set_backend(*names: str, ops=None) -> None:
    """Set the global priority (for all ops, or only for ``ops``); ``numpy`` stays last."""
    names = _check_names(names)
    op_set = _check_ops(ops)
    with _lock:
        if op_set is None:
            _state.priority = names
            _state.per_op = {}
        else:
            for op in op_set:
                _state.per_op[op] = names
        _changed()


def get_backend_priority(op: str | None = None) -> tuple[str, ...]:
    """Global priority (for ``op`` if given), without scopes."""
    _discover()
    if op is not None:
        return _state.per_op.get(op, _state.priority)
    return _state.priority


class use_backend:
    """Scoped priority: ``with fastdl.use_backend("numpy"): ...``.

    Stored in a ContextVar, so it is local to the thread / asyncio task, and
    nestable.  ``ops`` limits it to some ops; ``only=True`` forbids falling
    through to outer scopes and the global priority; ``coerce=True`` lets
    device backends accept host arrays (copying them).
    """

    def __init__(self, *names: str, ops=None, only: bool = False, coerce: bool = False):
        names = _check_names(names)
        only = check_flag(only, "only")
        if only and not names:
            # a scope that forbids every backend would fail each op it covers, far from here
            raise ValueError("use_backend(only=True) needs at least one backend name, got none")
        self._scope = _Scope(names, _check_ops(ops), only, check_flag(coerce, "coerce"))

    def __enter__(self):
        _scopes.set(_scopes.get() + (self._scope,))
        return self

    def __exit__(self, *exc):
        # pop our scope from *this* context's stack: one object may be shared by
        # threads and tasks, and nested in itself
        cur = _scopes.get()
        if not cur or cur[-1] is not self._scope:
            raise RuntimeError("use_backend scopes must be exited in the reverse order of entry")
        _scopes.set(cur[:-1])
        return False


def coerce_allowed(op: str) -> bool:
    """True when the innermost scope that applies to ``op`` set ``coerce=True``."""
    for scope in reversed(_scopes.get()):
        if scope.applies(op):
            return scope.coerce
    return False


def register_backend(obj: Any, *, replace: bool = False) -> None:
    """Register a backend object (``name``, ``ops``, optional ``can_run``)."""
    checked_ops = _check_backend(obj)
    _discover()
    with _lock:
        if obj.name in _state.slots and not replace:
            raise ValueError(f"a backend named {obj.name!r} is already registered; "
                             "pass replace=True to replace it")
        _state.slots[obj.name] = _Slot(obj.name, "register_backend", None, obj, ops=checked_ops)
        _changed()


def unregister_backend(name: str) -> None:
    """Remove a backend registered with ``register_backend`` (or any non-reference one)."""
    _check_names((name,))
    if name == REFERENCE:
        raise ValueError("the reference backend 'numpy' cannot be removed")
    with _lock:
        del _state.slots[name]
        _state.priority = tuple(n for n in _state.priority if n != name)
        _state.per_op = {k: tuple(n for n in v if n != name) for k, v in _state.per_op.items()}
        _changed()


# ---------------------------------------------------------------- resolution

def _plan(op: str, scopes: tuple[_Scope, ...]):
    """Ordered (name, why) candidates for op under these scopes."""
    order: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(names, why):
        for n in names:
            if n not in seen and n in _state.slots:
                seen.add(n)
                order.append((n, why))

    for depth, scope in enumerate(reversed(scopes)):
        if scope.applies(op):
            add(scope.names, "use_backend scope" + (" (only)" if scope.only else ""))
            if scope.only:
                return order
    add(_state.per_op.get(op, _state.priority), "global priority")
    add((REFERENCE,), "reference backend (last)")
    return order


def _candidates(op: str):
    scopes = _scopes.get()
    key = (op, scopes, _state.version)     # the version before any lazy load below
    hit = _cache.get(key)
    if hit is not None:
        return hit
    op = _check_op(op)                     # discovers backends on first use
    viable, skipped = [], []
    for name, why in _plan(op, scopes):
        slot = _state.slots[name]
        _load(slot)
        if slot.error is not None:
            skipped.append((name, f"failed to load: {slot.error}"))
        elif op not in slot.ops:
            skipped.append((name, "does not implement this op"))
        else:
            viable.append((name, slot.ops[op], getattr(slot.obj, "can_run", None), why, tuple(skipped)))
    hit = (tuple(viable), tuple(skipped))
    _cache[key] = hit
    return hit


def _explicit(op: str, name: str):
    _check_names((name,))
    slot = _state.slots[name]
    _load(slot)                 # the named backend may define the op (a plugin's own)
    _check_op(op)
    if slot.error is not None:
        raise BackendNotImplementedError(op, name, f"failed to load: {slot.error}")
    if op not in slot.ops:
        raise BackendNotImplementedError(op, name, "does not implement this op")
    return slot.ops[op], getattr(slot.obj, "can_run", None)


def _resolve(op, args, kwargs, backend: str | None, check_args: bool = True):
    """(name, callable, why) of the backend that runs this call."""
    if not isinstance(op, str):
        op = _ops.get(op).name
    if backend is not None:
        fn, can_run = _explicit(op, backend)
        if can_run is not None and check_args:
            ok = can_run(op, *args, **kwargs)
            if ok is not True:
                raise BackendNotImplementedError(op, backend, str(ok))
        return backend, fn, f"backend={backend!r} keyword"
    viable, skipped = _candidates(op)
    declined = []
    for name, fn, can_run, why, skipped_before in viable:
        if skipped_before and _state.strict:
            n, r = skipped_before[0]
            raise BackendNotImplementedError(op, n, f"{r} (FASTDL_STRICT=1 forbids fallback)")
        if can_run is not None and check_args:
            ok = can_run(op, *args, **kwargs)
            if ok is not True:
                declined.append((name, str(ok)))
                log.debug("op %s: backend %r declined: %s", op, name, ok)
                if _state.strict:
                    raise BackendNotImplementedError(
                        op, name, f"{ok} (FASTDL_STRICT=1 forbids fallback)")
                continue
        if skipped_before or declined:
            why += "; skipped " + ", ".join(f"{n} ({r})" for n, r in skipped_before + tuple(declined))
        return name, fn, why
    reasons = "; ".join(f"{n}: {r}" for n, r in skipped + tuple(declined)) or "no backend tried"
    raise BackendNotImplementedError(op, "any", reasons)


def dispatch(op, args: tuple, kwargs: dict, backend: str | None = None):
    """Run op (an ``OpSpec`` or its name) with the backend chosen by the rules above;
    ``fastdl.ops.<name>(*args, backend=...)`` is the same call."""
    name, fn, why = _resolve(op, args, kwargs, backend)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("op %s -> backend %r (%s)", op, name, why)
    return fn(*args, **kwargs)


def which_backend(op, *args, backend: str | None = None, **kwargs) -> tuple[str, str]:
    """(name, reason) of the backend that would run ``op``.

    With arguments, backends' ``can_run`` checks see them; without, they are
    assumed to accept.
    """
    name, _, why = _resolve(op, args, kwargs, backend, check_args=bool(args or kwargs))
    return name, why
