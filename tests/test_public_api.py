"""What ``import fastdl`` gives a user: every public submodule as an attribute, imported
lazily, and every top-level name.  Each check runs in a fresh interpreter, since this test
process has imported everything already."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBMODULES = ["nn", "norm", "decode", "quant", "registry", "complexity", "bench", "rnn",
              "rnn_analysis", "lora", "optim"]
LAZY = ["fastdl.nn", "fastdl.decode", "fastdl.quant", "fastdl.bench", "fastdl.complexity",
        "fastdl.rnn", "fastdl.rnn_analysis", "fastdl.lora", "fastdl.optim"]
# the names ``from fastdl import ...`` has offered, which must keep working
TOP_LEVEL = [
    "__version__", "decode", "quant", "build_info", "get_num_threads", "set_num_threads",
    "norm_stats", "NORM_KINDS", "NormStats", "batch_norm", "layer_norm", "instance_norm",
    "group_norm", "rms_norm", "batch_norm_backward", "layer_norm_backward",
    "instance_norm_backward", "group_norm_backward", "rms_norm_backward", "Backend",
    "BackendInfo", "BackendNotImplementedError", "backends", "register_backend", "set_backend",
    "use_backend", "which_backend",
]


def run(code: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTDL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]]
                                                       if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_does_not_import_the_lazy_submodules():
    loaded = run("""
        import json, sys
        import fastdl
        print(json.dumps(sorted(m for m in sys.modules
                                if m.startswith("fastdl.") or m == "importlib.metadata")))
    """)
    for name in LAZY + ["importlib.metadata"]:
        assert name not in loaded, loaded


@pytest.mark.parametrize("name", SUBMODULES)
def test_each_submodule_is_an_attribute_after_import_fastdl(name):
    got = run(f"""
        import json, sys
        import fastdl
        before = sorted(m for m in {LAZY!r} if m in sys.modules)
        mod = fastdl.{name}
        print(json.dumps([before, mod.__name__, mod is sys.modules["fastdl.{name}"],
                          "{name}" in dir(fastdl)]))
    """)
    before, modname, same, listed = got
    assert modname == f"fastdl.{name}" and same and listed
    assert before == [] or name in ("norm", "registry")


def test_first_use_of_nn():
    """The new user's first line."""
    assert run("""
        import json, fastdl, numpy as np
        layer = fastdl.nn.LayerNorm(16)
        print(json.dumps(list(layer(np.ones((2, 16), np.float32)).shape)))
    """) == [2, 16]


def test_every_top_level_name_imports():
    got = run(f"""
        import json
        import fastdl
        names = {TOP_LEVEL!r}
        ns = {{}}
        exec("from fastdl import " + ", ".join(names), ns)
        print(json.dumps([sorted(set(names) - set(fastdl.__all__)),
                          [n for n in names if ns[n] is not getattr(fastdl, n)]]))
    """)
    assert got == [[], []]


def test_unknown_attribute_is_an_attribute_error():
    got = run("""
        import json, fastdl
        try:
            fastdl.no_such_thing
        except AttributeError as exc:
            print(json.dumps([str(exc), hasattr(fastdl, "demo_not_here")]))
    """)
    assert got == ["module 'fastdl' has no attribute 'no_such_thing'", False]


def test_ops_of_lazy_submodules_are_known_before_they_are_imported():
    """Naming a decode/quant op in a scope right after ``import fastdl`` works (the
    backends declare them when the registry loads them)."""
    got = run("""
        import json, fastdl
        with fastdl.use_backend("numpy", ops=["topk", "qmatmul"]):
            name = fastdl.which_backend("topk")[0]
        print(json.dumps([name, fastdl.decode.topk([3.0, 1.0, 2.0], 1)[1].tolist()]))
    """)
    assert got == ["numpy", [0]]
