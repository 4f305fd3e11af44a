"""The fastdl command: info, backends, bench (in-process, small settings)."""
import json
import subprocess
import sys

import pytest

from fastdl.bench import all_cases
from fastdl.cli import main


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] and info["compiled"] is True
    assert info["simd_detected"] in ("avx2", "scalar")
    assert isinstance(info["openmp"], bool)


def test_backends_table(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for word in ("cython", "numpy", "norm_stats", "loaded"):
        assert word in out


def test_bench_quick_case_with_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc = main(["bench", "--only", "norm_stats/layer/*", "--rounds", "2", "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "norm_stats/layer" in out and "vs numpy" in out
    data = json.loads(path.read_text())
    rows = {r["backend"]: r for r in data["results"]}
    assert {"cython", "numpy"} <= set(rows)
    cy = rows["cython"]
    assert cy["median_s"] > 0 and cy["vs_numpy"] > 0 and cy["vs_limit"] > 0
    assert cy["limit_kind"] in ("read", "np.max")
    assert rows["numpy"]["vs_numpy"] is None


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
