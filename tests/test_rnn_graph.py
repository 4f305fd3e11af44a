"""The unrolled graph: the nodes and labelled edges the equations imply, and rendering."""
import re
import shutil

import pytest

from fastdl.rnn_analysis import render, unrolled_graph

_EDGE = re.compile(r"(\w+) -> (\w+) \[(?:head)?label=<(\w)<sup>\((\w)\)</sup>>")
_NODE = re.compile(r"^  (\w+) \[label=", re.M)


def _expected(T, dirs):
    edges = set()
    for t in range(1, T + 1):
        if "f" in dirs:
            edges |= {(f"x{t}", f"hf{t}", "W", "f"), (f"hf{t - 1}", f"hf{t}", "U", "f"),
                      (f"hf{t}", f"y{t}", "V", "f")}
        if "b" in dirs:
            edges |= {(f"x{t}", f"hb{t}", "W", "b"), (f"hb{t + 1}", f"hb{t}", "U", "b"),
                      (f"hb{t}", f"y{t}", "V", "b")}
    return edges


@pytest.mark.parametrize("T", [1, 3, 5])
@pytest.mark.parametrize("direction,dirs", [("both", "fb"), ("forward", "f"),
                                            ("backward", "b")])
def test_nodes_and_edges(T, direction, dirs):
    dot = unrolled_graph(T, direction=direction)
    assert isinstance(dot, str) and dot.startswith("digraph")
    assert set(_EDGE.findall(dot)) == _expected(T, dirs)
    nodes = set(_NODE.findall(dot))
    want = {f"x{t}" for t in range(1, T + 1)} | {f"y{t}" for t in range(1, T + 1)}
    if "f" in dirs:
        want |= {f"hf{t}" for t in range(0, T + 1)}          # h_0^(f) .. h_T^(f)
    if "b" in dirs:
        want |= {f"hb{t}" for t in range(1, T + 2)}          # h_1^(b) .. h_{T+1}^(b)
    assert nodes == want


def test_bad_arguments():
    with pytest.raises(ValueError, match="T must be >= 1"):
        unrolled_graph(0)
    with pytest.raises(TypeError, match="T must be an int"):
        unrolled_graph(2.0)
    with pytest.raises(ValueError, match="direction must be one of"):
        unrolled_graph(3, direction="sideways")
    with pytest.raises(ValueError, match="format"):
        render(unrolled_graph(), "graph.gif")
    with pytest.raises(TypeError, match="dot must be DOT text"):
        render(3, "graph.svg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")
@pytest.mark.parametrize("suffix,magic", [("svg", b"<?xml"), ("png", b"\x89PNG")])
def test_render(tmp_path, suffix, magic):
    path = unrolled_graph(3).render(tmp_path / f"fig.{suffix}")
    data = open(path, "rb").read()
    assert data.startswith(magic)
    if suffix == "svg":
        assert data.count(b"<g id=\"node") == 3 + 3 + 4 + 4   # x, y, h^(f) 0..3, h^(b) 1..4


def test_render_without_graphviz_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt install graphviz"):
        unrolled_graph(3).render(tmp_path / "fig.svg")
    assert not (tmp_path / "fig.svg").exists()
