"""Backend registry (fastdl.registry): entry-point plugins (discovered lazily, never
imported by resolution, a failing plugin listed with its error) and the DEBUG log of
each resolution.

Throwaway backends are registered with ``fastdl.register_backend``; their
``norm_stats`` records each call, so a test can see which backend ran.  Every
test starts and ends with a pristine registry (``registry._reset()``) and
without the FASTDL_BACKEND / FASTDL_STRICT env vars.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastdl
from fastdl import registry
from fastdl.registry import Backend, BackendInfo, BackendNotImplementedError

from _registry_helpers import (OP, X, backend_of, decline_float32, register_lacking, reset_registry,
                               run_python)
# pytest fixtures; pristine_registry is autouse: imported so that it applies here


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

pytestmark = pytest.mark.usefixtures("pristine_registry")


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
