"""Backend registry (fastdl.registry): which backend runs an op.

The priority order and ``set_backend`` (global and per op), ``use_backend`` scopes
(``only``, ``ops``, nesting, re-entry, exceptions), the strict ``backend=`` keyword,
declining backends, and scopes local to a thread and to an asyncio task.

Throwaway backends are registered with ``fastdl.register_backend``; their
``norm_stats`` records each call, so a test can see which backend ran.  Every
test starts and ends with a pristine registry (``registry._reset()``) and
without the FASTDL_BACKEND / FASTDL_STRICT env vars.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import fastdl
from fastdl import registry
from fastdl.registry import BackendNotImplementedError

from _registry_helpers import OP, X, backend_of, decline_float32, register_lacking
# pytest fixtures; pristine_registry is autouse: imported so that it applies here


# ---------------------------------------------------------------- 1. priority order

def test_default_is_cython_then_numpy(rec):
    assert fastdl.which_backend(OP) == ("cython", "global priority")
    assert registry.get_backend_priority() == ("cython",)
    # numpy is appended as the reference: with cython removed it runs
    registry.unregister_backend("cython")
    assert fastdl.which_backend(OP) == ("numpy", "reference backend (last)")

pytestmark = pytest.mark.usefixtures("pristine_registry")


def test_set_backend_changes_global_priority(rec):
    rec.register("alt")
    fastdl.set_backend("numpy")
    assert fastdl.which_backend(OP) == ("numpy", "global priority")
    fastdl.set_backend("alt", "numpy")
    fastdl.norm_stats(X, "batch")
    assert rec.names == ["alt"]
    # the op receives validated positional args (x, kind, num_groups, ddof)
    x, kind, num_groups, ddof = rec.calls[0][1]
    assert x is X and (kind, num_groups, ddof) == ("batch", None, 0)
    # a list is accepted too
    fastdl.set_backend(["cython", "alt"])
    assert backend_of() == "cython"


def test_set_backend_per_op_only_touches_listed_ops(rec):
    fastdl.register_backend(rec.backend("alt", extra_ops=["other_op"]))
    fastdl.set_backend("alt")
    fastdl.set_backend("numpy", ops=["norm_stats"])
    assert backend_of(OP) == "numpy"
    assert backend_of("other_op") == "alt"
    assert registry.get_backend_priority(OP) == ("numpy",)
    assert registry.get_backend_priority("other_op") == ("alt",)
    fastdl.norm_stats(X, "batch")
    assert rec.names == []


def test_numpy_is_always_the_last_fallback(rec):
    register_lacking()
    fastdl.set_backend("lacking")          # cython is no longer in the priority
    name, why = fastdl.which_backend(OP)
    assert name == "numpy"
    assert "reference backend (last)" in why and "skipped lacking" in why
    mean, var = fastdl.norm_stats(X, "batch")
    np.testing.assert_allclose(mean, X.mean(axis=(0, 2)))
    np.testing.assert_allclose(var, X.var(axis=(0, 2)))


def test_unregister_backend(rec):
    rec.register("alt")
    fastdl.set_backend("alt", ops=[OP])
    assert backend_of() == "alt"
    registry.unregister_backend("alt")
    assert "alt" not in registry.backends()
    assert backend_of() == "numpy"         # removed from the per-op priority too
    with pytest.raises(ValueError, match="reference"):
        registry.unregister_backend("numpy")


# ---------------------------------------------------------------- 2. use_backend scopes

def test_use_backend_only_stops_fallthrough():
    register_lacking()
    with fastdl.use_backend("lacking"):
        assert backend_of() == "cython"    # falls through to the global priority
    with fastdl.use_backend("lacking", only=True):
        with pytest.raises(BackendNotImplementedError, match="lacking"):
            fastdl.norm_stats(X, "batch")
        with pytest.raises(BackendNotImplementedError):
            fastdl.which_backend(OP)
    with fastdl.use_backend("numpy", only=True):
        assert fastdl.which_backend(OP) == ("numpy", "use_backend scope (only)")


@pytest.mark.parametrize("kwargs", [{"only": True}, {"only": True, "ops": [OP]}])
def test_use_backend_only_without_names_fails_at_once(kwargs):
    """A scope that allows no backend would make every op inside it fail."""
    with pytest.raises(ValueError, match=r"use_backend\(only=True\) needs at least one "
                                         "backend name, got none"):
        fastdl.use_backend(**kwargs)
    with pytest.raises(ValueError, match="needs at least one backend name"):
        fastdl.use_backend([], **kwargs)
    with fastdl.use_backend():                 # no names, no only: an empty scope, harmless
        assert backend_of() == "cython"


@pytest.mark.parametrize("kw", ["only", "coerce"])
@pytest.mark.parametrize("value", ["yes", 1, None])
def test_use_backend_flags_must_be_bools(kw, value):
    with pytest.raises(TypeError, match=f"{kw} must be a bool"):
        fastdl.use_backend("numpy", **{kw: value})


def test_use_backend_ops_limits_the_scope(rec):
    fastdl.register_backend(rec.backend("alt", extra_ops=["other_op"]))
    fastdl.set_backend("alt")
    with fastdl.use_backend("numpy", ops=["other_op"]):
        assert backend_of(OP) == "alt"                  # not listed: global applies
    with fastdl.use_backend("numpy", ops=OP):           # a single str is accepted
        assert backend_of(OP) == "numpy"
        assert backend_of("other_op") == "alt"
    # only=True of a scope that does not apply does not stop anything
    with fastdl.use_backend("numpy", ops=["other_op"], only=True):
        assert backend_of(OP) == "alt"


def test_nested_scopes_innermost_wins(rec):
    rec.register("alt")
    with fastdl.use_backend("numpy"):
        assert backend_of() == "numpy"
        with fastdl.use_backend("alt"):
            fastdl.norm_stats(X, "batch")
            assert backend_of() == "alt"
        assert backend_of() == "numpy"
    assert backend_of() == "cython"
    assert rec.names == ["alt"]


def test_outer_only_scope_still_stops_fallthrough():
    register_lacking()
    with fastdl.use_backend("numpy", only=True), fastdl.use_backend("lacking"):
        assert backend_of() == "numpy"     # inner skipped; outer only=True: no cython


def test_same_use_backend_object_is_reentrant():
    scope = fastdl.use_backend("numpy")
    with scope as entered:
        assert entered is scope
        with scope:
            assert backend_of() == "numpy"
        assert backend_of() == "numpy"     # the outer entry is still active
    assert backend_of() == "cython"
    with scope:                            # and usable again afterwards
        assert backend_of() == "numpy"
    assert backend_of() == "cython"


def test_scope_is_undone_on_exception():
    with pytest.raises(RuntimeError):
        with fastdl.use_backend("numpy"):
            raise RuntimeError("boom")
    assert backend_of() == "cython"


# ---------------------------------------------------------------- 3. strict backend= keyword

def test_backend_keyword_runs_that_backend(rec):
    rec.register("alt")
    fastdl.set_backend("alt")
    mean, _ = fastdl.norm_stats(X, "batch", backend="numpy")
    np.testing.assert_allclose(mean, X.mean(axis=(0, 2)))
    assert rec.names == []
    assert fastdl.which_backend(OP, backend="numpy") == ("numpy", "backend='numpy' keyword")
    # the keyword beats a use_backend scope too
    with fastdl.use_backend("numpy", only=True):
        fastdl.norm_stats(X, "batch", backend="alt")
    assert rec.names == ["alt"]


def test_backend_keyword_lacking_op_raises():
    register_lacking()
    with pytest.raises(BackendNotImplementedError) as info:
        fastdl.norm_stats(X, "batch", backend="lacking")
    err = info.value
    assert isinstance(err, NotImplementedError)
    assert (err.op, err.backend) == (OP, "lacking")
    assert "does not implement" in err.reason
    assert "lacking" in str(err) and OP in str(err)


def test_backend_keyword_unknown_name_lists_known():
    with pytest.raises(ValueError, match="nope") as info:
        fastdl.norm_stats(X, "batch", backend="nope")
    assert "cython" in str(info.value) and "numpy" in str(info.value)


def test_declining_backend_explicit_raises_with_reason(rec):
    rec.register("picky", can_run=decline_float32)
    with pytest.raises(BackendNotImplementedError, match="float32 not supported") as info:
        fastdl.norm_stats(X.astype(np.float32), "batch", backend="picky")
    assert info.value.backend == "picky" and info.value.reason == "float32 not supported"
    fastdl.norm_stats(X, "batch", backend="picky")       # float64: accepted
    assert rec.names == ["picky"]


def test_declining_backend_is_skipped_in_resolution(rec):
    rec.register("picky", can_run=decline_float32)
    fastdl.set_backend("picky", "cython")
    x32 = X.astype(np.float32)
    fastdl.norm_stats(x32, "batch")
    assert rec.names == []                               # declined: cython ran
    name, why = fastdl.which_backend(OP, x32, "batch", None, 0)
    assert name == "cython"
    assert "skipped picky (float32 not supported)" in why
    # can_run sees the arguments: float64 is accepted
    fastdl.norm_stats(X, "batch")
    assert rec.names == ["picky"]
    # without arguments which_backend assumes acceptance
    assert backend_of() == "picky"


# ---------------------------------------------------------------- 7. thread / task isolation

def test_scopes_are_thread_local(rec):
    rec.register("alt")
    barrier = threading.Barrier(2, timeout=10)
    seen, errors = {}, []

    def worker(name):
        try:
            with fastdl.use_backend(name):
                barrier.wait()             # both scopes active now
                seen[name] = backend_of()
                barrier.wait()             # neither exits before both looked
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("numpy", "alt")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    assert seen == {"numpy": "numpy", "alt": "alt"}
    assert backend_of() == "cython"        # main thread unaffected


def test_scopes_are_asyncio_task_local(rec):
    rec.register("alt")

    async def task(name):
        with fastdl.use_backend(name):
            await asyncio.sleep(0)         # let the other task enter its scope
            first = backend_of()
            await asyncio.sleep(0)
            return first, backend_of()

    async def main():
        return await asyncio.gather(task("numpy"), task("alt"))

    assert asyncio.run(main()) == [("numpy", "numpy"), ("alt", "alt")]
    assert backend_of() == "cython"


def test_one_use_backend_object_shared_by_two_tasks():
    scope = fastdl.use_backend("numpy")    # e.g. a module-level scope reused everywhere

    async def first():
        with scope:
            await asyncio.sleep(0)         # second() enters while we are inside
            return backend_of()

    async def second():
        with scope:
            await asyncio.sleep(0)
            await asyncio.sleep(0)         # exits after first()
            return backend_of()

    async def main():
        return await asyncio.gather(first(), second())

    assert asyncio.run(main()) == ["numpy", "numpy"]
    assert backend_of() == "cython"
