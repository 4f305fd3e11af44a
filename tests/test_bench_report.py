"""The benchmark's page: write_index (one self-contained HTML file) and bench_sections."""
from __future__ import annotations

import base64
import os
import sys
from html.parser import HTMLParser

import pytest

from fastdl.bench.report_html import RESULT_COLUMNS, bench_sections, write_index
from fastdl.bench.runner import Row

VOID = {"meta", "img", "br", "hr", "link", "input"}
INFO = {"version": "9.9.9", "cpu": "Test CPU <x86>", "num_threads": 3, "simd_active": "avx2"}


class Page(HTMLParser):
    """Collects what the tests look at, and checks that every element is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors = [], []
        self.imgs, self.links, self.tags = [], [], []
        self.text, self.cells, self.headers, self.rows = [], [], [], []
        self.spans = []          # (class, text)
        self._span = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
        if tag == "a":
            self.links.append(a.get("href"))
        if tag == "tr":
            self.rows.append([])
        if tag == "span":
            self._span = [a.get("class"), ""]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self.spans.append(tuple(self._span))
            self._span = None
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._span is not None:
            self._span[1] += data
        if self.stack and self.stack[-1] in ("td", "th", "span") and self.rows:
            self.rows[-1].append(data)


def parse(path) -> Page:
    with open(path, encoding="utf-8") as f:
        src = f.read()
    p = Page()
    p.feed(src)
    p.close()
    p.src = src
    return p


def _file(tmp_path, name, payload: bytes):
    path = tmp_path / name
    path.write_bytes(payload)
    return str(path)


def test_write_index_embeds_every_image_and_escapes_text(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    a = _file(out, "a.png", b"\x89PNG\r\n\x1a\n first image")
    b = _file(tmp_path, "b.png", b"\x89PNG\r\n\x1a\n second, outside the folder")
    evil = '<script>alert("x")</script> & <b>'
    sections = [
        {"title": "One " + evil, "text": "first paragraph " + evil + "\n\nsecond paragraph",
         "images": [a, b],
         "table": {"columns": ["case", "x <y>"],
                   "rows": [["c/1", "1.50"], ["c/<2>", {"text": "ok", "status": "met"}],
                            ["c/3", [{"text": "bad", "status": "missed"}, "plain"]]]}},
        {"title": "Two", "text": "", "images": [], "table": None},
    ]
    path = write_index(str(out), title="Report " + evil, build_info=INFO, sections=sections)
    assert path == os.path.join(str(out), "index.html")
    page = parse(path)
    assert not page.errors and page.stack == []
    assert page.src.startswith("<!DOCTYPE html>")
    # no markup from the texts got through: the only script-ish things are text
    assert "script" not in page.tags and "b" not in page.tags
    text = "".join(page.text)
    assert text.count(evil) == 5          # <title>, <h1>, the contents, <h2>, <p>
    assert "first paragraph" in text and "second paragraph" in text
    assert "x <y>" in text and "c/<2>" in text
    for v in ("9.9.9", "Test CPU <x86>", "avx2", "UTC"):
        assert v in text
    # every image embedded, byte for byte, in the order given
    srcs = [i["src"] for i in page.imgs]
    assert len(srcs) == 2
    for src, f in zip(srcs, (a, b)):
        assert src.startswith("data:image/png;base64,")
        with open(f, "rb") as fh:
            assert base64.b64decode(src.split(",", 1)[1]) == fh.read()
    # the caption links the file beside the page; not one outside the folder
    assert "a.png" in page.links and not any(h and "b.png" in h for h in page.links)
    assert ("met", "ok") in page.spans and ("missed", "bad") in page.spans
    assert ["case", "x <y>"] in page.rows and ["c/1", "1.50"] in page.rows


def test_write_index_rejects_bad_sections(tmp_path):
    ok = {"title": "t", "text": "", "images": [], "table": None}
    with pytest.raises(ValueError, match="no such file.*missing.png"):
        write_index(tmp_path, title="t", build_info={}, sections=[
            dict(ok, images=[str(tmp_path / "missing.png")])])
    with pytest.raises(ValueError, match=r"sections\[1\].*keys"):
        write_index(tmp_path, title="t", build_info={}, sections=[ok, {"title": "x"}])
    with pytest.raises(ValueError, match=r"rows'\]\[0\].*2 cells"):
        write_index(tmp_path, title="t", build_info={}, sections=[
            dict(ok, table={"columns": ["a", "b"], "rows": [["only one"]]})])
    with pytest.raises(TypeError, match="sections"):
        write_index(tmp_path, title="t", build_info={}, sections="not a list")
    with pytest.raises(ValueError, match="status"):
        write_index(tmp_path, title="t", build_info={}, sections=[
            dict(ok, table={"columns": ["a"], "rows": [[{"text": "x", "status": "great"}]]})])
    assert not (tmp_path / "index.html").exists()


def _row(case, backend, t, *, vs_numpy=None, vs_torch=None, vs_limit=None, kind=None,
         peers=None, checks=()):
    return Row(case=case, op="op", backend=backend, median_s=t, gbps=1.0, vs_numpy=vs_numpy,
               vs_torch=vs_torch, vs_limit=vs_limit, limit_s=None if not vs_limit
               else t / vs_limit, limit_kind=kind, rounds=3, vs_peers=dict(peers or {}),
               checks=list(checks))


def _check(key, goal, got, at_most=False):
    met = None if got is None else (got <= goal if at_most else got >= goal)
    return {"key": key, "goal": goal, "at_most": at_most, "got": got, "met": met}


def fake_rows():
    return [
        _row("norm/layer/a", "numpy", 3e-3, vs_torch=0.5, vs_limit=3.6, kind="copy"),
        _row("norm/layer/a", "cython", 1e-3, vs_numpy=3.0, vs_torch=1.5, vs_limit=1.2,
             kind="copy", checks=[_check("vs_numpy", 3.0, 3.0),
                                  _check("vs_limit", 1.1, 1.2, at_most=True)]),
        _row("norm/layer/a", "torch", 1.5e-3, vs_numpy=2.0, vs_limit=1.8, kind="copy"),
        _row("quant/qmatmul/b", "cython", 2.5e-6, vs_numpy=10.0, vs_limit=2.0, kind="read",
             peers={"peer <A>": 4.0, "avx2": 0.5},
             checks=[_check("vs:peer <A>", 3.0, 4.0), _check("vs_torch", 1.0, None)]),
        # a case the cython backend did not run: the NumPy backend's row stands in
        _row("rnn/birnn/c", "numpy", 2.0, vs_torch=0.1),
    ]


def test_bench_sections_tables_and_bars(tmp_path):
    pytest.importorskip("matplotlib")
    secs = bench_sections(fake_rows(), tmp_path / "out", "cython")
    assert [s["title"] for s in secs] == ["Summary", "Normalization layers (forward and "
                                          "backward)", "Quantization: quantize and quantized "
                                          "matmul", "Bidirectional RNN"]
    summary = secs[0]["table"]["rows"]
    assert [r[:2] for r in summary] == [["norm", 1], ["quant", 1], ["rnn", 1]]
    assert [(r[2]["text"], r[3]["text"], r[4]["text"]) for r in summary] == [
        ("1", "1", "0"), ("1", "0", "1"), ("0", "0", "0")]
    assert "2 targets met, 1 missed, 1 not measurable" in secs[0]["text"]
    norm, quant, rnn = (s["table"] for s in secs[1:])
    assert norm["columns"] == RESULT_COLUMNS
    assert norm["rows"] == [["norm/layer/a", "1.00 ms", "3.00", "1.50", "1.20 (copy)", "-",
                             [{"text": "×numpy >= 3: 3.00 met", "status": "met"},
                              {"text": "limit <= 1.1: 1.20 missed", "status": "missed"}]]]
    assert quant["rows"] == [["quant/qmatmul/b", "2.50 µs", "10.0", "-", "2.00 (read)",
                              ["×peer <A> 4.00", "×avx2 0.50"],
                              [{"text": "×peer <A> >= 3: 4.00 met", "status": "met"},
                               {"text": "×torch >= 1: n/a", "status": "n/a"}]]]
    assert rnn["rows"] == [["rnn/birnn/c (on numpy)", "2.00 s", "-", "0.10", "-", "-", "-"]]
    for s, area in zip(secs[1:], ("norm", "quant", "rnn")):
        (png,) = s["images"]
        assert png == str(tmp_path / "out" / f"bars_{area}.png")
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # and the page built from them embeds every figure
    page = parse(write_index(tmp_path / "out", title="bench", build_info=INFO,
                             sections=secs))
    assert not page.errors
    assert len(page.imgs) == 3 and all(i["src"].startswith("data:image/png;base64,")
                                       for i in page.imgs)
    assert ["norm/layer/a", "1.00 ms", "3.00", "1.50", "1.20 (copy)", "-",
            "×numpy >= 3: 3.00 met", "limit <= 1.1: 1.20 missed"] in page.rows


def test_bars_read_every_ratio_as_faster_above_one():
    from fastdl.bench.report_plots import LIMIT, comparisons
    r = fake_rows()[3]
    assert comparisons(r) == [("numpy", 10.0), ("peer <A>", 4.0), ("avx2", 0.5),
                              (LIMIT, 0.5)]
    assert comparisons(_row("x", "cython", 1.0, vs_numpy=float("nan"), vs_limit=0.0)) == []


def test_bench_sections_errors(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="'avx9'"):
        bench_sections([_row("norm/x", "torch", 1.0)], tmp_path, "avx9")
    with pytest.raises(TypeError, match="backend"):
        bench_sections(fake_rows(), tmp_path, None)


def test_without_matplotlib_the_message_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib fails
    with pytest.raises(ImportError, match=r"fastdl\[plot\]"):
        bench_sections(fake_rows(), tmp_path / "out", "cython")
    from fastdl.bench.report_plots import peer_limit_bars
    with pytest.raises(ImportError, match=r"fastdl\[plot\]"):
        peer_limit_bars(fake_rows()[:1], tmp_path / "x.png", title="t")
    assert not (tmp_path / "out").exists()
