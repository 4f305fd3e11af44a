"""The scaling sweeps: the log-log fit, the verdict, the regime notes, the declared
sweeps' consistency with their formulas, one quick real sweep, the table and the
figures.  No timing verdicts here (the machine is shared): those are the benchmark's."""
import math
import os
import sys

import numpy as np
import pytest

from fastdl.bench import scaling
from fastdl.bench.scaling import (SweepResult, fit_slope, format_table, regime_note,
                                  run_sweeps, verdict)
from fastdl.bench.scaling_cases import SWEEPS


def _result(name="area/x", xs=(1, 2, 4, 8), p=1.0, exponent=1.0, tol=0.25, ops=None):
    xs = list(xs)
    secs = [1e-3 * x ** p for x in xs]
    ops = ops or [x for x in xs]
    slope = fit_slope(xs, secs)
    return SweepResult(name=name, area="area", variable="x", xs=xs, seconds=secs, ops=ops,
                       bytes=[8 * x for x in xs], slope=slope, ops_slope=fit_slope(xs, ops),
                       exponent=exponent, tol=tol, passed=verdict(slope, exponent, tol),
                       regime="one regime", ops_label="ops", why="", fixed="y=3",
                       best_seconds=[0.9 * t for t in secs], best_slope=slope)


# ---------------------------------------------------------------- the fit

@pytest.mark.parametrize("p", [0.0, 0.5, 1.0, 2.0, 3.0])
def test_fit_recovers_an_exact_power_law(p):
    xs = np.geomspace(3, 3000, 7)
    assert fit_slope(xs, 2.5 * xs ** p) == pytest.approx(p, abs=1e-12)


@pytest.mark.parametrize("p", [0.0, 1.0, 2.0])
def test_fit_recovers_a_noisy_power_law(p):
    rng = np.random.default_rng(7)
    xs = np.geomspace(16, 16 * 2 ** 7, 8)
    slopes = [fit_slope(xs, 1e-4 * xs ** p * np.exp(rng.normal(0, 0.1, xs.size)))
              for _ in range(20)]
    # 10 % log-normal noise over a factor 128: the slope's spread is ~0.03
    assert abs(np.median(slopes) - p) < 0.03
    assert max(abs(s - p) for s in slopes) < 0.12


def test_fit_is_least_squares_not_endpoints():
    xs = [1, 2, 4, 8, 16]
    ys = [1, 2, 4, 8, 1000]                  # one outlier at the end
    lx, ly = np.log(xs), np.log(ys)
    assert fit_slope(xs, ys) == pytest.approx(np.polyfit(lx, ly, 1)[0], rel=1e-12)


@pytest.mark.parametrize("xs, ys, match", [
    ([1, 2, 3], [1, 2], "one length"),
    ([1], [1], "at least 2"),
    ([1, 0, 2], [1, 1, 1], "positive"),
    ([1, 2], [1, -1], "positive"),
    ([1, 2], [1, np.nan], "positive finite"),
    ([3, 3, 3], [1, 2, 3], "distinct"),
])
def test_fit_rejects_bad_points(xs, ys, match):
    with pytest.raises(ValueError, match=match):
        fit_slope(xs, ys)


def test_verdict_bounds():
    assert verdict(1.2, 1.0, 0.25) and verdict(0.75, 1.0, 0.25)
    assert not verdict(1.26, 1.0, 0.25) and not verdict(0.74, 1.0, 0.25)
    assert verdict(0.1, 0.0, 0.25) and not verdict(-0.3, 0.0, 0.25)
    assert not verdict(float("nan"), 1.0, 0.25)
    with pytest.raises(ValueError, match="tol"):
        verdict(1.0, 1.0, -0.1)


# ---------------------------------------------------------------- the regime note

CACHES = {"L1d": 48 << 10, "L2": 2 << 20, "L3": 300 << 20}


def test_regime_note_names_the_cache_crossed_by_a_jump():
    xs = [2 ** k for k in range(14, 22)]
    nbytes = [8 * x for x in xs]                     # crosses 2 MiB between 2^18 and 2^19
    secs = [x * (1e-9 if 8 * x <= CACHES["L2"] else 3e-9) for x in xs]
    note = regime_note(xs, secs, xs, nbytes, "stream", CACHES)
    assert "rises ×3.00" in note and "x=262144" in note and "x=524288" in note
    assert "crosses L2 (2 MiB)" in note
    # the slope on each side of the step is the per-regime exponent, 1
    assert "slope 1.00 up to x=262144, 1.00 from x=524288" in note
    assert scaling.jump_index(secs, xs) == 4


def test_regime_note_blames_noise_when_the_working_set_is_unchanged():
    xs = [4, 8, 16, 32, 64, 128]
    secs = [1e-4 * x * (3 if x >= 32 else 1) for x in xs]
    note = regime_note(xs, secs, xs, [1 << 20] * len(xs), "search", CACHES)
    assert "x=16 and x=32" in note and "another process" in note


def test_regime_note_one_regime_and_falling_cost():
    xs = [2 ** k for k in range(6)]
    flat = regime_note(xs, [1e-3 * x for x in xs], xs, [8 * x for x in xs], "gemm", CACHES)
    assert flat.startswith("one regime")
    assert scaling.jump_index([1e-3 * x for x in xs], xs) is None
    # a fixed cost per call: time = 1 ms + x µs, the time per op falls along the range
    fixed = [1e-3 + 1e-6 * x for x in xs]
    falling = regime_note(xs, fixed, xs, [8 * x for x in xs], "search", CACHES)
    assert "falls" in falling and "fixed cost per step" in falling


def test_cache_sizes_reads_this_machine():
    sizes = scaling.cache_sizes()
    if not os.path.isdir("/sys/devices/system/cpu/cpu0/cache"):
        assert sizes == {}
    else:
        assert all(isinstance(v, int) and v > 0 for v in sizes.values())
        if "L1d" in sizes and "L2" in sizes:
            assert sizes["L1d"] < sizes["L2"]


# ---------------------------------------------------------------- the declared sweeps

def test_sweeps_are_well_formed():
    names = [s.name for s in SWEEPS]
    assert len(names) == len(set(names))
    areas = {s.area for s in SWEEPS}
    assert {"decoding", "LoRA", "BiRNN", "norms"} <= areas
    want = {("decoding", v) for v in "NBT"} | {("LoRA", v) for v in "drnh"} | {
        ("BiRNN", "T"), ("BiRNN", "d"), ("norms", "elements")}
    assert want <= {(s.area, s.variable) for s in SWEEPS}
    for s in SWEEPS:
        assert len(s.xs) >= 6, s.name
        assert list(s.xs) == sorted(set(s.xs)), s.name
        assert s.xs[-1] / s.xs[0] >= 8, s.name            # wide enough to fit
        assert set(s.quick_xs) <= set(s.xs) and len(s.quick_xs) >= 3, s.name
        assert 0 < s.tol <= 0.5 and s.why and s.kind in ("stream", "gemm", "search"), s.name


@pytest.mark.parametrize("sweep", [s for s in SWEEPS if s.formula is not None],
                         ids=lambda s: s.name)
def test_declared_exponent_matches_the_counts_over_the_range(sweep):
    """The analytic exponent is the dominant term's; over the declared range the exact
    count's own slope stays within half the tolerance of it."""
    ops = [sweep.formula(x) for x in sweep.xs]
    assert abs(fit_slope(sweep.xs, ops) - sweep.exponent) <= sweep.tol / 2


# ---------------------------------------------------------------- real quick sweeps

@pytest.mark.parametrize("name", ["birnn/d", "beam_search/T"])
def test_quick_real_sweep_is_sane(name):
    (res,) = run_sweeps(name, quick=True)
    assert res.name == name and res.xs == list(next(s for s in SWEEPS
                                                      if s.name == name).quick_xs)
    assert all(math.isfinite(t) and t > 0 for t in res.seconds)
    # counted by the code (the kernels' GEMMs, the search's candidates) == the formula
    assert res.counted_matches_formula is True
    assert res.ops == res.formula_ops
    assert math.isfinite(res.slope) and res.ops_slope > 0
    assert isinstance(res.passed, bool)
    assert res.passed == (abs(res.slope - res.exponent) <= res.tol)
    assert res.regime and len(res.half_slopes) in (0, 2)
    assert res.quick and format_table([res])[-1].endswith("indicative only)")
    assert all(0 < b <= t for b, t in zip(res.best_seconds, res.seconds))
    assert math.isfinite(res.best_slope)


def test_run_sweeps_arguments():
    with pytest.raises(ValueError, match="matches no sweep"):
        run_sweeps("no-such-sweep", quick=True)
    with pytest.raises(TypeError, match="only"):
        run_sweeps(3, quick=True)
    with pytest.raises(TypeError, match="quick"):
        run_sweeps("birnn/d", quick=1)


# ---------------------------------------------------------------- table and figures

def test_format_table_rows_and_summary():
    ok, bad = _result("a/N", p=1.0), _result("b/d", p=1.0, exponent=2.0, tol=0.35)
    lines = format_table([ok, bad])
    assert lines[0].split() == ["sweep", "var", "range", "slope", "fastest", "ops", "slope",
                                "analytic", "tol", "result"]
    row_ok = next(line for line in lines if line.startswith("a/N"))
    row_bad = next(line for line in lines if line.startswith("b/d"))
    assert "1.00" in row_ok and "pass" in row_ok and "±0.25" in row_ok
    assert "FAIL" in row_bad and "±0.35" in row_bad and " 2 " in row_bad
    assert sum(line.strip().startswith("regime:") for line in lines) == 2
    assert lines[-1] == "1/2 slopes within tolerance"


def test_figures_written(tmp_path):
    pytest.importorskip("matplotlib")
    from fastdl.bench.scaling_plots import scaling_figures
    results = [_result("beam_search/N"), _result("lora/d", p=1.8, exponent=2.0)]
    results[1].extra["jump"] = (2, 4)           # the shaded regime change is drawn too
    paths = scaling_figures(results, tmp_path / "figs")
    assert [os.path.basename(p) for p in paths] == ["scaling_beam_search_N.png",
                                                     "scaling_lora_d.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 5000


def test_figures_without_matplotlib_name_the_extra(monkeypatch, tmp_path):
    from fastdl.bench.scaling_plots import scaling_figures
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"fastdl\[plot\]"):
        scaling_figures([_result()], tmp_path / "none")
    assert not (tmp_path / "none").exists()
