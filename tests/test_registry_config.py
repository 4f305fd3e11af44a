"""Backend registry (fastdl.registry): configuration and bookkeeping.

Unknown backend / op names and non-str names, ``register_backend`` (duplicates,
duck-typed and invalid objects), the FASTDL_BACKEND / FASTDL_STRICT env vars, the
resolution cache following every change, ``fastdl.backends()`` and ``coerce`` scopes.

Throwaway backends are registered with ``fastdl.register_backend``; their
``norm_stats`` records each call, so a test can see which backend ran.  Every
test starts and ends with a pristine registry (``registry._reset()``) and
without the FASTDL_BACKEND / FASTDL_STRICT env vars.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastdl
from fastdl import registry
from fastdl.registry import Backend, BackendInfo, BackendNotImplementedError

from _registry_helpers import (OP, Recorder, X, _noop, backend_of, decline_float32,
                               register_lacking, reset_registry, run_python)
# pytest fixtures; pristine_registry is autouse: imported so that it applies here


# ---------------------------------------------------------------- 4. unknown names

@pytest.mark.parametrize("call", [
    lambda: fastdl.set_backend("nope"),
    lambda: fastdl.set_backend("numpy", "nope"),
    lambda: fastdl.use_backend("nope"),
    lambda: fastdl.which_backend(OP, backend="nope"),
], ids=["set_backend", "set_backend-2nd", "use_backend", "which_backend-kw"])
def test_unknown_backend_name_lists_valid_names(call):
    with pytest.raises(ValueError, match="'nope'") as info:
        call()
    assert "cython" in str(info.value) and "numpy" in str(info.value)
    assert backend_of() == "cython"        # nothing changed

pytestmark = pytest.mark.usefixtures("pristine_registry")


@pytest.mark.parametrize("call", [
    lambda: fastdl.set_backend("numpy", ops=["nope"]),
    lambda: fastdl.use_backend("numpy", ops=["nope"]),
    lambda: fastdl.which_backend("nope"),
], ids=["set_backend-ops", "use_backend-ops", "which_backend"])
def test_unknown_op_lists_valid_ops(call):
    with pytest.raises(ValueError, match="'nope'") as info:
        call()
    assert "norm_stats" in str(info.value)


@pytest.mark.parametrize("call", [
    lambda: fastdl.set_backend(1),
    lambda: fastdl.set_backend("numpy", None),
    lambda: fastdl.use_backend(b"numpy"),
    lambda: fastdl.set_backend("numpy", ops=[3]),
    lambda: fastdl.which_backend(3),
    lambda: fastdl.norm_stats(X, "batch", backend=1),
], ids=["set_backend", "set_backend-2nd", "use_backend", "ops", "which_backend", "keyword"])
def test_non_str_names_raise_type_error(call):
    with pytest.raises(TypeError):
        call()


# ---------------------------------------------------------------- 5. register_backend

def test_register_duplicate_name_needs_replace(rec):
    rec.register("alt")
    with pytest.raises(ValueError, match="already registered"):
        rec.register("alt")
    with pytest.raises(ValueError, match="already registered"):
        rec.register("cython")             # built-in names are taken too
    fastdl.register_backend(rec.backend("alt"), replace=True)
    assert "alt" in registry.backends()


def test_register_accepts_duck_typed_objects():
    class Plain:
        name = "plain"
        ops = {OP: lambda x, kind, num_groups, ddof: ("plain", "plain")}

    fastdl.register_backend(Plain())
    assert fastdl.norm_stats(X, "batch", backend="plain") == ("plain", "plain")


@pytest.mark.parametrize("obj", [
    object(),                                               # no name
    Backend(name="", ops={OP: _noop}),                      # empty name
    Backend(name=3, ops={OP: _noop}),                       # non-str name
    Backend(name="bad", ops=[("norm_stats", _noop)]),       # ops not a mapping
    Backend(name="bad", ops={OP: 42}),                      # op not callable
    Backend(name="bad", ops={1: _noop}),                    # op name not str
    Backend(name="bad", ops={OP: _noop}, can_run="yes"),    # can_run not callable
], ids=["no-name", "empty-name", "int-name", "ops-list", "op-not-callable", "op-int-key",
        "can_run-str"])
def test_register_invalid_objects_raise_type_error(obj):
    with pytest.raises(TypeError):
        fastdl.register_backend(obj)
    assert set(registry.backends()) == {"cython", "numpy"}


# ---------------------------------------------------------------- 6. env vars

def test_env_backend_sets_default_priority(monkeypatch):
    monkeypatch.setenv("FASTDL_BACKEND", "numpy,cython")
    reset_registry()
    assert fastdl.which_backend(OP) == ("numpy", "global priority")
    assert registry.get_backend_priority() == ("numpy", "cython")


def test_env_backend_unknown_name_warns_and_is_ignored(monkeypatch):
    monkeypatch.setenv("FASTDL_BACKEND", "nope, numpy")
    reset_registry()
    with pytest.warns(RuntimeWarning, match="nope"):
        assert backend_of() == "numpy"
    assert registry.get_backend_priority() == ("numpy",)


def test_env_strict_turns_missing_op_into_error(monkeypatch):
    register_lacking()
    fastdl.set_backend("lacking", "cython")
    assert backend_of() == "cython"        # not strict: falls back
    monkeypatch.setenv("FASTDL_STRICT", "1")
    reset_registry()
    register_lacking()
    fastdl.set_backend("lacking", "cython")
    with pytest.raises(BackendNotImplementedError, match="FASTDL_STRICT") as info:
        fastdl.norm_stats(X, "batch")
    assert info.value.backend == "lacking"
    fastdl.set_backend("cython")           # nothing skipped: no error
    assert backend_of() == "cython"


def test_env_strict_turns_decline_into_error(monkeypatch, rec):
    monkeypatch.setenv("FASTDL_STRICT", "1")
    reset_registry()
    rec.register("picky", can_run=decline_float32)
    fastdl.set_backend("picky", "cython")
    with pytest.raises(BackendNotImplementedError, match="float32 not supported") as info:
        fastdl.norm_stats(X.astype(np.float32), "batch")
    assert info.value.backend == "picky"
    fastdl.norm_stats(X, "batch")          # accepted: runs
    assert rec.names == ["picky"]


def test_env_backend_in_fresh_process():
    proc = run_python("""
        import fastdl
        print(fastdl.which_backend('norm_stats')[0])
    """, FASTDL_BACKEND="numpy")
    assert proc.stdout.strip() == "numpy"


# ---------------------------------------------------------------- 10. cache invalidation

def test_cached_resolution_follows_set_backend():
    for _ in range(3):                     # warm the cache
        assert backend_of() == "cython"
    fastdl.set_backend("numpy")
    assert backend_of() == "numpy"
    fastdl.set_backend("cython", ops=[OP])
    assert backend_of() == "cython"


def test_cached_resolution_follows_register_and_unregister(rec):
    rec.register("alt")
    fastdl.set_backend("alt")
    fastdl.norm_stats(X, "batch")
    fastdl.norm_stats(X, "batch")          # second call from the cache
    replacement = Recorder()
    fastdl.register_backend(replacement.backend("alt"), replace=True)
    fastdl.norm_stats(X, "batch")
    assert rec.names == ["alt", "alt"] and replacement.names == ["alt"]
    registry.unregister_backend("alt")
    assert backend_of() == "numpy"


def test_cache_is_keyed_by_scope():
    assert backend_of() == "cython"
    with fastdl.use_backend("numpy"):
        assert backend_of() == "numpy"
    assert backend_of() == "cython"


def test_concurrent_first_use_sees_configured_priority(monkeypatch):
    reset_registry()
    original = registry._configure_from_env
    seen = []
    other = threading.Thread(target=lambda: seen.append(backend_of()))

    def slow_configure():
        other.start()                      # another thread's first call, mid-discovery
        other.join(timeout=0.3)
        original()

    monkeypatch.setattr(registry, "_configure_from_env", slow_configure)
    registry._discover()
    other.join(timeout=10)
    assert seen == ["cython"]
    assert backend_of() == "cython"


# ---------------------------------------------------------------- 11. listing

def test_backends_lists_builtins():
    infos = fastdl.backends()
    assert {"cython", "numpy"} <= set(infos)
    for name in ("cython", "numpy"):
        info = infos[name]
        assert isinstance(info, BackendInfo) and info.name == name
        assert "norm_stats" in info.ops
        assert info.loaded is True and info.error is None
        assert info.status == "loaded" and info.source == "builtin"


def test_backends_lists_registered(rec):
    rec.register("alt", extra_ops=["other_op"])
    info = registry.backends()["alt"]
    assert info.source == "register_backend"
    assert info.ops == ("norm_stats", "other_op")


def test_top_level_backends_stays_callable():
    # regression: a subpackage named fastdl.backends used to rebind this name
    fastdl.norm_stats(X, "batch")          # imports the built-in backend modules
    assert fastdl.backends is registry.backends
    assert "cython" in fastdl.backends()


# ---------------------------------------------------------------- 12. coerce

def test_coerce_allowed_only_inside_coerce_scope():
    register_lacking()                     # declares "other_op"
    assert registry.coerce_allowed(OP) is False
    with fastdl.use_backend("numpy", coerce=True):
        assert registry.coerce_allowed(OP) is True
        with fastdl.use_backend("cython"):             # innermost applying scope decides
            assert registry.coerce_allowed(OP) is False
        with fastdl.use_backend("cython", ops=["other_op"]):  # does not apply to norm_stats
            assert registry.coerce_allowed(OP) is True
        assert registry.coerce_allowed(OP) is True
    with fastdl.use_backend("numpy"):
        assert registry.coerce_allowed(OP) is False
    assert registry.coerce_allowed(OP) is False
