"""fastdl.complexity.report: every formula beside an instrumented run, counted == formula."""
import time

import pytest

from fastdl import complexity as cx
from fastdl import complexity_decode, complexity_norm

KEYS = {"area", "quantity", "formula", "params", "analytic", "counted", "relation", "document"}
TOO_LARGE_TO_RUN = {"sequences for the course's vocabulary",
                    "one step's float32 scores: bytes, the course's example"}


def _check(rows):
    assert {r["area"] for r in rows} == {"norm", "decode", "birnn", "lora"}
    for r in rows:
        assert set(r) == KEYS
        assert isinstance(r["analytic"], int) and isinstance(r["params"], dict)
        if r["counted"] is None:
            assert r["params"].get("N") in (20000, 500000), r
            continue
        if r["relation"] == "==":
            assert r["counted"] == r["analytic"], r
        else:
            assert r["relation"] == "<=" and 0 < r["counted"] <= r["analytic"], r


def test_every_row_is_counted_and_holds():
    cx.report()                          # the first call also imports the library's parts
    t0 = time.perf_counter()
    rows = cx.report()
    assert time.perf_counter() - t0 < 2.0
    _check(rows)
    assert len({(r["area"], r["quantity"], str(r["params"])) for r in rows}) == len(rows)
    not_run = {r["quantity"] for r in rows if r["counted"] is None}
    assert not_run <= TOO_LARGE_TO_RUN | {q for q in not_run if "full table" in q}
    assert sum(r["counted"] is None for r in rows) == 3


def test_the_report_is_deterministic():
    assert cx.report() == cx.report()


def test_the_course_values_are_set_beside_the_counts():
    by = {r["quantity"]: r for r in cx.report()}
    assert by["batch norm: elements per statistic"]["counted"] == 12
    assert by["batch norm: elements per statistic"]["document"] == "1/(B·F) = 1/12"
    assert by["instance norm: statistics"]["counted"] == 8
    table = next(r for q, r in by.items() if q.startswith("full table") and
                 r["params"]["N"] == 20000)
    assert table["analytic"] == 8 * 20000 ** 10 and "8.192e+31 TB" in table["quantity"]
    assert by["QLoRA MHA weights dequantized per forward"]["analytic"] == 4 * 2 * 8 * 8
    assert by["MHA adapter multiply-adds (per head)"]["counted"] == 6 * 2 * 6 * 8 * 2


def test_other_shapes():
    rows = cx.report({"decode": {"N": 7, "B": 2, "T": 3}, "norm": {"shape": (2, 3, 2, 2)},
                      "birnn": {"T": 3}, "lora": {"h": 3, "r": 1}})
    _check(rows)
    beam = next(r for r in rows if r["quantity"] == "beam search: candidates scored")
    assert beam["params"] == {"N": 7, "B": 2, "T": 3} and beam["counted"] == 7 + 14 + 14
    batch = next(r for r in rows if r["quantity"] == "batch norm: elements per statistic")
    assert batch["counted"] == 2 * 4 and batch["document"] is None


def test_counted_comes_from_the_run_not_the_formula(monkeypatch):
    monkeypatch.setattr(cx, "beam_candidates", lambda B, N, T: 1)
    monkeypatch.setattr(complexity_norm, "norm_statistics", lambda *a, **k: 1)
    monkeypatch.setattr(complexity_decode, "greedy_candidates", lambda N, T: 1)
    rows = {r["quantity"]: r for r in cx.report()}
    for q in ("beam search: candidates scored", "batch norm: statistics",
              "greedy: candidates scored"):
        assert rows[q]["analytic"] == 1 and rows[q]["counted"] > 1


@pytest.mark.parametrize("shapes,match", [
    ({"gpu": {}}, "keys from"), ([1], "keys from"), ({"decode": {"V": 3}}, "shapes\\['decode'\\]"),
    ({"lora": 3}, "shapes\\['lora'\\]"),
])
def test_bad_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        cx.report(shapes)
