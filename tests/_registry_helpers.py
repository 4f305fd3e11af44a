"""Shared by the tests/test_registry_*.py modules (their fixtures are in conftest.py): a
recording backend and small
backends that lack or decline an op, and fresh-process runners.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import fastdl
from fastdl import registry
from fastdl.registry import Backend


REPO_ROOT = Path(__file__).resolve().parents[1]
X = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
OP = "norm_stats"


# an op of a backend of its own (as a plugin would bring one): defined before use
fastdl.ops.define(fastdl.ops.OpSpec("other_op", args=(), results=(), area="test"), replace=True)


def reset_registry():
    """Fresh registry state, as after ``import fastdl`` (declared ops are kept)."""
    registry._reset()


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
