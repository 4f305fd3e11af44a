"""Benchmark case modules are found by discovery: a new fastdl/bench/cases_*.py registers
its cases without any list to edit."""
import sys
import textwrap

import fastdl.bench as bench_pkg
from fastdl.bench import case as case_mod


def test_every_cases_module_is_discovered():
    mods = case_mod.case_modules()
    assert {"fastdl.bench.cases_norm", "fastdl.bench.cases_decode",
            "fastdl.bench.cases_quant", "fastdl.bench.cases_layers"} <= set(mods)
    ops = {c.op for c in case_mod.all_cases()}
    assert {"layer_norm_fwd", "topk", "qmatmul"} <= ops


def test_a_new_cases_module_registers_its_cases(tmp_path, monkeypatch):
    (tmp_path / "cases_extra.py").write_text(textwrap.dedent("""
        from fastdl.bench.case import Case, register
        register(Case(name="extra/probe", op="topk", setup=dict, call=lambda i, b: None,
                      bytes_read=0, bytes_written=0))
    """))
    (tmp_path / "helpers_not_cases.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.setattr(bench_pkg, "__path__", list(bench_pkg.__path__) + [str(tmp_path)])
    try:
        assert "fastdl.bench.cases_extra" in case_mod.case_modules()
        assert "extra/probe" in {c.name for c in case_mod.all_cases()}
    finally:
        case_mod._CASES.pop("extra/probe", None)
        sys.modules.pop("fastdl.bench.cases_extra", None)
