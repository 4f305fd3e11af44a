"""The fastdl command: info, backends, bench (in-process, small settings)."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from fastdl.bench import all_cases
from fastdl.cli import main


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] and info["compiled"] is True
    assert info["simd_detected"] in ("avx512", "avx2", "scalar")
    assert isinstance(info["openmp"], bool)


def test_backends_table(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for word in ("cython", "numpy", "norm_stats", "loaded"):
        assert word in out


def test_bench_quick_case_with_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["bench", "--only", "norm_stats/layer/64x256x1024/float32", "--rounds", "2",
               "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "norm_stats/layer" in out and "×numpy" in out
    data = json.loads(path.read_text())
    rows = {r["backend"]: r for r in data["results"]}
    assert {"cython", "numpy"} <= set(rows)
    cy = rows["cython"]
    assert cy["median_s"] > 0 and cy["vs_numpy"] > 0 and cy["vs_limit"] > 0
    assert cy["limit_kind"] in ("read", "np.max")
    assert rows["numpy"]["vs_numpy"] is None


def test_bench_of_lora_cases_prints_the_decision_table_before_the_summary(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["bench", "--only", "lora/lora/linear/d1024xn128xr8/float32", "--rounds", "1",
               "--no-torch", "--json", str(path)])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    summary = max(i for i, ln in enumerate(lines) if ln.startswith("targets:"))
    assert " in " in lines[summary]
    assert any("│ memory limit │ QLoRA" in ln for ln in lines[:summary])
    # after the summary only the --json file's line (wrapped or not)
    assert lines[summary + 1].startswith("wrote ") and not any("│" in ln for ln in lines[summary:])
    decision = json.loads(path.read_text())["lora_decision"]
    assert decision["mha"]["memory limit"] == "QLoRA" and decision["ffn"]["memory limit"] == "LoRA"


def test_bench_rejects_unknown_pattern_and_backend(capsys):
    assert main(["bench", "--only", "no-such-case"]) == 2
    assert main(["bench", "--backend", "nope"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().out


def test_quick_set_has_the_issue_cases():
    names = {c.name for c in all_cases(quick=True)}
    for kind in ("batch", "layer", "instance", "group32"):
        assert f"norm_stats/{kind}/64x256x1024/float32" in names
    assert len(all_cases(quick=False)) > len(names)


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastdl", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("fastdl ")


@pytest.mark.parametrize("argv", [["bench", "--quick", "--full"], ["frobnicate"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_demo_prints_the_documents_results(capsys, tmp_path):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert '"the red rectangle"  log p = -9.7' in out            # greedy and exact search
    assert '"a blue square"  log p = -9.9' in out and '"a red circle"  log p = -10.0' in out
    assert "│ layer    │ mean      │ (1,)   │ 19/6    │ 3.1667 │ 3.167  │ ✓" in out  # layer norm
    assert 'greedy\'s prefix "the red" (-5.0) ranked 3' in out
    # the BiRNN exercise: the recursion's terms, the corrections, the graph written
    assert "∇h_t(f) L_t = -2 V(f)ᵀ(z_t - y_t)" in out and "diag(1 − h_{t−1}(b)²) U(b)" in out
    assert "forward 162 = 2·T·3d², backward 324 = 2·T·6d²" in out
    assert "the gradient vanishes" in out
    dot = (tmp_path / "birnn_unrolled_T3.dot").read_text()
    assert dot.startswith("digraph") and "hb4 -> hb3" in dot and "hf0 -> hf1" in dot
    if shutil.which("dot"):
        assert (tmp_path / "birnn_unrolled_T3.svg").read_bytes().startswith(b"<?xml")
    # LoRA / QLoRA: every counted quantity equals its formula, the decision table, training
    assert "│ QLoRA dequantized weights, MHA  │   8,192 │   8,192 │ O(4d²) = O(d²)" in out
    lora = out[out.index("LoRA / QLoRA in the transformer layer"):out.index("LoRA or QLoRA")]
    assert "✗" not in lora
    assert "│ memory limit │ QLoRA [QLoRA] ✓" in out and "│ both         │ QLoRA [QLoRA] ✓" in out
    m = re.search(r"\(([0-9]+)× lower\) in 300 AdamW steps", out)
    assert m and int(m.group(1)) >= 10
    assert (tmp_path / "qlora-adapter" / "adapter_model.safetensors").is_file()


def test_demo_without_files_prints_the_graph(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--no-files", "--no-train"]) == 0
    out = capsys.readouterr().out
    assert "digraph birnn" in out and "AdamW steps" not in out
    assert 'hf0 [label=<h<sub>0</sub><sup>(f)</sup>>' in out     # not eaten as console markup
    assert list(tmp_path.iterdir()) == []


def test_only_picks_from_every_case_unless_quick():
    full = {c.name for c in all_cases(only="decode")}
    quick = {c.name for c in all_cases(quick=True, only="decode")}
    assert "decode/topk/n1e7/k1000/float32" in full - quick
    assert "decode/beam_topk/B16xN50257/float32" in quick


def test_bench_reports_named_peers_and_metrics(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["bench", "--only", "decode/topk/n1e6/k10/*", "--rounds", "1", "--no-torch",
               "--json", str(path)])
    assert rc == 0
    rows = {r["backend"]: r for r in json.loads(path.read_text())["results"]}
    assert {"cython", "numpy", "np.argpartition+sort"} <= set(rows)
    assert rows["cython"]["vs_peers"]["np.argpartition+sort"] > 0
    assert rows["np.argpartition+sort"]["vs_peers"] == {}
    out = capsys.readouterr().out
    assert "×np.argpartition+" in out and "sort >= 3" in out


def test_targets_on_peers_and_metrics():
    from fastdl.bench.runner import Row, _check_targets
    row = Row(case="c", op="topk", backend="cython", median_s=1.0, gbps=1.0, vs_numpy=4.0,
              vs_torch=None, vs_limit=2.5, limit_s=0.4, limit_kind="read", rounds=1,
              targets={"vs_numpy": 3.0, "vs_limit": 2.0, "vs:argsort": 3.0, "max:ratio": 2.0,
                       "vs_torch": 1.0},
              vs_peers={"argsort": 2.0}, metrics={"ratio": 1.5})
    _check_targets(row)
    assert row.missed == ["vs_limit 2.50 (target <= 2)", "vs:argsort 2.00 (target >= 3)"]
    assert [(c["key"], c["met"]) for c in row.checks] == [
        ("vs_numpy", True), ("vs_limit", False), ("vs:argsort", False), ("max:ratio", True),
        ("vs_torch", None)]


def test_quant_cases_cover_the_issue_matrix():
    names = {c.name for c in all_cases(only="quant")}
    for fmt in ("int8-b64", "int4-b64", "nf4-b64-dq", "q4_0", "q4_1"):
        for n in (1, 8, 64, 512):
            assert f"quant/path/{fmt}/n{n}/exact" in names
            if fmt != "nf4-b64-dq":
                assert f"quant/path/{fmt}/n{n}/int8" in names
            if fmt != "int8-b64" and n <= 16:
                assert f"quant/path/{fmt}/n{n}/lut" in names
        assert f"quant/qmatmul/{fmt}/n128/float32" in names or fmt.startswith("q")
    for fmt in ("int8-b64", "int4-b64", "nf4-b64-dq"):
        assert f"quant/quantize/{fmt}/4096x4096/float32" in names
    case = next(c for c in all_cases(only="quant/path/int4-b64/n1/lut"))
    assert case.targets["cython"] == {"vs:numpy x@W f32": 4.0, "vs_limit": 2.0}
    case = next(c for c in all_cases(only="quant/path/int4-b64/n512/int8"))
    assert case.targets["cython"] == {"vs:torch int8 dynamic": 1.2}


def test_bench_plot_writes_the_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc = main(["bench", "--only", "decode/topk/n1e6/k10/*", "--rounds", "1", "--no-torch",
               "--plot", str(tmp_path)])
    assert rc == 0
    for name in ("speedups.png", "birnn_gradient_flow.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_bench_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "--only", "decode/topk/n1e6/k10/*", "--plot", str(tmp_path)]) == 2
    assert "fastdl[plot]" in capsys.readouterr().out
