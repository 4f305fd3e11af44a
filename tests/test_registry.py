"""Tests of the backend registry (fastdl.registry, DESIGN.md §2).

Throwaway backends are registered with ``fastdl.register_backend``; their
``norm_stats`` records each call, so a test can see which backend ran.  Every
test starts and ends with a pristine registry (``registry._reset()``) and
without the FASTDL_BACKEND / FASTDL_STRICT env vars.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import fastdl
from fastdl import registry
from fastdl.registry import Backend, BackendInfo, BackendNotImplementedError

REPO_ROOT = Path(__file__).resolve().parents[1]
X = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
OP = "norm_stats"
# an op of a backend of its own (as a plugin would bring one): defined before use
fastdl.ops.define(fastdl.ops.OpSpec("other_op", args=(), results=(), area="test"), replace=True)


# ---------------------------------------------------------------- helpers


def reset_registry():
    """Fresh registry state, as after ``import fastdl`` (declared ops are kept)."""
    registry._reset()


@pytest.fixture(autouse=True)
def pristine_registry(monkeypatch):
    """Fresh registry, default env, before and after every test."""
    monkeypatch.delenv("FASTDL_BACKEND", raising=False)
    monkeypatch.delenv("FASTDL_STRICT", raising=False)
    reset_registry()
    yield
    reset_registry()


class Recorder:
    """Factory of throwaway backends that log their calls into ``self.calls``."""

    def __init__(self):
        self.calls: list[tuple] = []   # (backend name, args)

    def stats_fn(self, name):
        def norm_stats(x, kind, num_groups, ddof):
            self.calls.append((name, (x, kind, num_groups, ddof)))
            c = x.shape[1]
            return np.zeros(c), np.ones(c)
        return norm_stats

    def backend(self, name, *, can_run=None, extra_ops=()):
        ops = {OP: self.stats_fn(name)}
        ops.update({op: (lambda *a, **k: None) for op in extra_ops})
        return Backend(name=name, ops=ops, can_run=can_run)

    def register(self, name, **kw):
        fastdl.register_backend(self.backend(name, **kw))

    @property
    def names(self):
        return [name for name, _ in self.calls]


@pytest.fixture
def rec():
    return Recorder()


def _noop(*args, **kwargs):
    return None


def register_lacking(name="lacking"):
    """A backend that implements some other op, not norm_stats."""
    fastdl.register_backend(Backend(name=name, ops={"other_op": _noop}))


def decline_float32(op, x, *args, **kwargs):
    """can_run: declines float32 input with a reason, accepts the rest."""
    return "float32 not supported" if x.dtype == np.float32 else True


def backend_of(op=OP, *args, **kwargs):
    return fastdl.which_backend(op, *args, **kwargs)[0]


def python_env(**extra):
    """Environment for a subprocess: this env, fastdl importable, FASTDL_* cleared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTDL_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(p) for p in extra.pop("path_first", [])] + [str(REPO_ROOT)]
        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra)
    return env


def run_python(code, **env_extra):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=python_env(**env_extra),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


# ---------------------------------------------------------------- 1. priority order


def test_default_is_cython_then_numpy(rec):
    assert fastdl.which_backend(OP) == ("cython", "global priority")
    assert registry.get_backend_priority() == ("cython",)
    # numpy is appended as the reference: with cython removed it runs
    registry.unregister_backend("cython")
    assert fastdl.which_backend(OP) == ("numpy", "reference backend (last)")


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


# ---------------------------------------------------------------- 8. entry-point plugins


PLUGIN_GOOD = """
import fastdl
import numpy as np

CALLS = []

def norm_stats(x, kind, num_groups, ddof):
    CALLS.append(kind)
    return np.zeros(x.shape[1]), np.ones(x.shape[1])

def fake_op(*args):
    return "fake_op"

fastdl.ops.define(fastdl.ops.OpSpec("fake_op", args=(), results=(), area="plugin"),
                  replace=True)

def make():
    return fastdl.Backend(name="fake", ops={"norm_stats": norm_stats, "fake_op": fake_op})
"""

PLUGIN_IMPORT_ERROR = """
raise ImportError("fastdl_badplugin needs libmissing.so")
"""

PLUGIN_WRONG_NAME = """
import fastdl

def make():
    return fastdl.Backend(name="other", ops={"norm_stats": lambda *a: None})
"""


def write_plugin(root: Path, ep_name: str, module: str, source: str) -> None:
    """A package ``module`` plus a dist-info declaring entry point ``ep_name``."""
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(textwrap.dedent(source))
    dist = module.replace("_", "-")
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fastdl.backends]\n{ep_name} = {module}:make\n")


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    """tmp_path on sys.path; plugin modules imported from it are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("fastdl_") and "plugin" in m]:
        del sys.modules[mod]
    importlib.invalidate_caches()


def test_entry_point_plugin_is_discovered_lazily(plugin_path):
    write_plugin(plugin_path, "fake", "fastdl_fakeplugin", PLUGIN_GOOD)
    reset_registry()
    registry._discover()
    assert "fake" in registry._state.slots            # known by name ...
    assert "fastdl_fakeplugin" not in sys.modules     # ... but not imported
    infos = fastdl.backends()
    assert "fake" in infos
    assert infos["fake"].loaded and infos["fake"].error is None
    assert infos["fake"].source == "entry point fastdl_fakeplugin:make"
    assert infos["fake"].ops == ("fake_op", "norm_stats")
    assert fastdl.which_backend("fake_op", backend="fake")[0] == "fake"
    fastdl.norm_stats(X, "batch", backend="fake")
    assert sys.modules["fastdl_fakeplugin"].CALLS == ["batch"]
    assert backend_of() == "cython"                   # a plugin does not jump the queue
    fastdl.set_backend("fake")
    assert backend_of() == "fake"


def test_entry_point_plugin_not_imported_by_resolution_in_fresh_process(plugin_path):
    write_plugin(plugin_path, "fake", "fastdl_fakeplugin", PLUGIN_GOOD)
    proc = run_python("""
        import sys, fastdl
        print(fastdl.which_backend('norm_stats')[0], 'fastdl_fakeplugin' in sys.modules)
        print(fastdl.norm_stats([[1.0, 2.0]], 'batch', backend='fake') is not None,
              'fastdl_fakeplugin' in sys.modules)
    """, path_first=[plugin_path])
    assert proc.stdout.split() == ["cython", "False", "True", "True"]


def test_unknown_op_name_is_rejected_without_importing_plugins(plugin_path):
    """A typo must not import every plugin (a GPU plugin would initialize CUDA)."""
    write_plugin(plugin_path, "fake", "fastdl_fakeplugin", PLUGIN_GOOD)
    proc = run_python("""
        import sys, fastdl
        for call in (lambda: fastdl.which_backend('norm_stat'),
                     lambda: fastdl.set_backend('numpy', ops=['topkk']),
                     lambda: fastdl.use_backend('numpy', ops=['beam_topk', 'nope'])):
            try:
                call()
            except ValueError as e:
                print('ValueError', 'known ops' in str(e))
        print('fastdl_fakeplugin' in sys.modules)
    """, path_first=[plugin_path])
    assert proc.stdout.split() == ["ValueError", "True"] * 3 + ["False"], proc.stderr


def test_backend_whose_function_does_not_match_its_spec_fails_to_load():
    def topk(x, kk):           # the spec's arguments are (x, k)
        return None

    with pytest.raises(TypeError, match=r"op 'topk'.*takes \(x, kk\)"):
        fastdl.register_backend(Backend(name="mismatch", ops={"topk": topk}))
    assert "mismatch" not in fastdl.backends()


def test_entry_point_plugin_not_imported_by_resolution_after_reset(plugin_path):
    write_plugin(plugin_path, "fake", "fastdl_fakeplugin", PLUGIN_GOOD)
    registry._reset()                      # the real one, without re-declaring norm_stats
    assert backend_of() == "cython"
    assert "fastdl_fakeplugin" not in sys.modules


def test_plugin_op_with_backend_keyword_as_first_call(plugin_path):
    write_plugin(plugin_path, "fake", "fastdl_fakeplugin", PLUGIN_GOOD)
    reset_registry()                       # fresh, undiscovered registry
    assert fastdl.which_backend("fake_op", backend="fake")[0] == "fake"


@pytest.mark.parametrize("source, message", [
    (PLUGIN_IMPORT_ERROR, "ImportError: fastdl_badplugin needs libmissing.so"),
    (PLUGIN_WRONG_NAME, "returned a backend named 'other'"),
], ids=["import-error", "wrong-name"])
def test_failing_plugin_is_listed_with_its_error(plugin_path, source, message):
    write_plugin(plugin_path, "bad", "fastdl_badplugin", source)
    reset_registry()
    with pytest.warns(RuntimeWarning, match="'bad' failed to load"):
        infos = fastdl.backends()
    bad = infos["bad"]
    assert isinstance(bad, BackendInfo)
    assert message in bad.error
    assert bad.status == "error" and not bad.loaded and bad.ops == ()
    assert infos["cython"].status == "loaded"
    # resolution still works: the broken backend is skipped
    assert backend_of() == "cython"
    fastdl.set_backend("bad")
    name, why = fastdl.which_backend(OP)
    assert name == "numpy" and "skipped bad (failed to load" in why
    with pytest.raises(BackendNotImplementedError, match="failed to load"):
        fastdl.norm_stats(X, "batch", backend="bad")


def test_failing_plugin_does_not_break_import_in_fresh_process(plugin_path):
    write_plugin(plugin_path, "bad", "fastdl_badplugin", PLUGIN_IMPORT_ERROR)
    proc = run_python("""
        import fastdl
        print(fastdl.backends()['bad'].error)
        print(fastdl.which_backend('norm_stats')[0])
    """, path_first=[plugin_path])
    lines = proc.stdout.splitlines()
    assert lines == ["ImportError: fastdl_badplugin needs libmissing.so", "cython"]
    assert "RuntimeWarning" in proc.stderr


# ---------------------------------------------------------------- 9. DEBUG logging


def test_debug_log_names_op_and_backend(caplog):
    caplog.set_level(logging.DEBUG, logger="fastdl.dispatch")
    fastdl.norm_stats(X, "batch")
    fastdl.norm_stats(X, "batch", backend="numpy")
    msgs = [r.getMessage() for r in caplog.records if r.name == "fastdl.dispatch"]
    assert any("norm_stats" in m and "'cython'" in m and "global priority" in m for m in msgs)
    assert any("norm_stats" in m and "'numpy'" in m and "keyword" in m for m in msgs)


def test_debug_log_reports_skips(caplog, rec):
    rec.register("picky", can_run=decline_float32)
    register_lacking()
    fastdl.set_backend("lacking", "picky", "cython")
    caplog.set_level(logging.DEBUG, logger="fastdl.dispatch")
    fastdl.norm_stats(X.astype(np.float32), "batch")
    msgs = [r.getMessage() for r in caplog.records if r.name == "fastdl.dispatch"]
    assert any("'picky' declined" in m and "float32 not supported" in m for m in msgs)
    chosen = [m for m in msgs if "-> backend 'cython'" in m]
    assert chosen and "skipped lacking (does not implement this op)" in chosen[-1]


def test_no_debug_records_when_not_enabled(caplog):
    caplog.set_level(logging.INFO, logger="fastdl.dispatch")
    fastdl.norm_stats(X, "batch")
    assert not [r for r in caplog.records if r.name == "fastdl.dispatch"]


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
