"""``fastdl demo``: every value it prints beside the course's agrees with the course
or is explained by a listed correction, and every correction's value is right."""
import math
from fractions import Fraction

import numpy as np
import pytest
from rich.console import Console

from fastdl import demo, demo_course, demo_decode, demo_lora, demo_rnn
from fastdl.demo_errata import BY_KEY, ERRATA


def _console():
    return Console(file=open("/dev/null", "w"), width=200)


def test_agrees_rounds_and_rejects_truncation():
    assert demo_course.agrees(2.583, 31 / 12, 3)
    assert not demo_course.agrees(2.916, 35 / 12, 3)         # truncated, not rounded
    assert demo_course.agrees([1.0, 2.0], [1.0004, 1.9996], 3)
    assert not demo_course.agrees([1.0, 2.0], [1.0, 2.0, 3.0], 3)


def _by_hand(kind):
    """Means and biased variances of the course's tensor with Fractions, no NumPy."""
    x = demo_course.NORM_X.astype(int).tolist()
    N, Cn, F = 4, 2, 3
    if kind == "batch":
        groups = [[x[n][c][f] for n in range(N) for f in range(F)] for c in range(Cn)]
    elif kind == "layer":
        groups = [[x[n][c][f] for c in range(Cn) for f in range(F)] for n in range(N)]
    else:
        groups = [x[n][c] for n in range(N) for c in range(Cn)]
    mean = [Fraction(sum(g), len(g)) for g in groups]
    var = [sum((v - m) ** 2 for v in g) / len(g) for g, m in zip(groups, mean)]
    return mean, var


def test_normalization_rows_agree_with_the_course_or_a_correction():
    rows = demo.normalization(_console())
    assert len(rows) == 2 * (2 + 4 + 8)
    for kind in ("batch", "layer", "instance"):
        mean, var = _by_hand(kind)
        lib_mean = [r[3] for r in rows if r[0] == kind and r[1] == "mean"]
        lib_var = [r[3] for r in rows if r[0] == kind and r[1] == "variance"]
        assert np.allclose(lib_mean, [float(m) for m in mean], rtol=0, atol=1e-12)
        assert np.allclose(lib_var, [float(v) for v in var], rtol=0, atol=1e-12)
    wrong = [r for r in rows if not r[5]]
    assert [(r[0], r[1], r[2]) for r in wrong] == [("batch", "mean", (1,))]
    assert all(r[6] in BY_KEY for r in wrong)


def test_decoding_counts_agree_or_point_to_a_correction():
    rows = demo_decode.counts(_console())
    assert len(rows) == 9
    for quantity, course, lib, good, key in rows:
        assert good in (True, False, "loose")
        if good is not True:
            assert key in BY_KEY, quantity
    assert {r[4] for r in rows if r[3] is not True} == {
        "exhaustive_time", "table_memory", "beam_sort", "beam_prefixes"}
    assert next(r for r in rows if r[4] == "table_memory")[3] is False


def test_searches_reproduce_every_course_answer_on_the_shapes_tree():
    got = demo_decode.searches(_console())
    assert got["greedy"] == demo_course.GREEDY
    assert got["beam"] == demo_course.BEAM
    assert got["beam1_is_greedy"]
    steps = got["steps"]
    assert len(steps) == sum(len(c) for c in demo_course.BEAM_CANDIDATES.values())
    assert all(good for *_, good in steps)
    for s, text, score, kept, _ in steps:
        assert demo_course.BEAM_CANDIDATES[s][text] == score
        assert (text in demo_course.BEAM_KEPT[s]) == kept


def test_forward_jacobian_matches_finite_differences():
    assert demo_rnn.forward_jacobian_error() < 1e-8


def test_total_hidden_gradients_match_finite_differences():
    p, x, z = demo_rnn._example()
    _, cache = demo_rnn.rnn.birnn_forward(x, p)
    errs = demo_rnn.total_gradient_errors(p, x, z, cache, demo_rnn.bptt_terms(cache, z))
    assert len(errs) == demo_rnn.T and max(errs) < 1e-6


def test_lora_tables_count_the_formula_and_match_the_course_on_memory():
    rows = demo_lora.complexity_table(_console())
    assert all(counted == formula for _, counted, formula, *_ in rows)
    table = demo_lora.decision_table(_console(), repeat=1)
    for stage in ("mha", "ffn"):                  # sizes decide these rows, not timings
        assert table[stage]["memory limit"] == demo_course.DECISION[stage]["memory limit"]
        assert table[stage]["both"] == demo_course.DECISION[stage]["both"]


# ------------------------------------------------------------------ the corrections

def _check_batch_mean_2(v):
    assert v["fraction"] == Fraction(35, 12)
    assert math.isclose(v["value"], 35 / 12, rel_tol=1e-15)


def _check_instance_var_2(v):
    assert math.isclose(v["value"], 14 / 9, rel_tol=1e-15)
    assert math.isclose(v["mean"], 7 / 3, rel_tol=1e-15)
    assert math.isclose(v["as_written"], ((1 - 2.667) ** 2 + (2 - 2.667) ** 2
                                          + (4 - 2.667) ** 2) / 3, rel_tol=1e-12)


def _check_table_memory(v):
    assert v["count"] == 20000 ** 10 == 1024 * 10 ** 40
    assert v["tb_exact"] == 8192 * 10 ** 28                    # 8 bytes × 20000^10 / 10^12
    assert 8e31 < v["tb"] < 8.2e31
    assert math.isclose(v["ratio"], 8.192e31 / 8 ** 21, rel_tol=1e-12)


def _check_exhaustive_time(v):
    assert v["measured"] == v["formula"] == 10 + 100 + 1000
    assert v["T_N_T"] == 3 * 10 ** 3


def _check_beam_sort(v):
    assert v["sort"] == math.ceil(5e7 * math.log2(5e7))          # whole comparisons
    assert v["heap"] == math.ceil(5e7 * math.log2(100))


def _check_beam_prefixes(v):
    assert v["backpointers"] == 2 * 3                          # B·T
    assert v["copies"] == v["copies_formula"] == 2 * (1 + 2 + 3)
    assert v["course_assign"] == 6


def _check_beam_space(v):
    assert v == {"float32": 200.0, "float64": 400.0}


def _check_greedy_formula(v):
    assert math.isclose(v, -1.7 - 3.3 - 4.7, abs_tol=1e-9)


def _check_beam_vs_greedy(v):
    assert math.isclose(v["beam"], -9.9, abs_tol=1e-9)
    assert math.isclose(v["greedy"], -9.7, abs_tol=1e-9)
    assert math.isclose(v["exact"], -9.7, abs_tol=1e-9)


def _torch_example():
    torch = pytest.importorskip("torch")
    p, x, z = demo_rnn._example()
    P = {k: torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)
         for k, a in p.arrays().items()}
    return torch, P, torch.tensor(x), torch.tensor(z)


def _check_birnn_jacobian(v):
    assert v["error"] < 1e-8 and v["written_error"] > 1e-3
    torch, P, x, z = _torch_example()
    p, xn, _ = demo_rnn._example()
    _, cache = demo_rnn.rnn.birnn_forward(xn, p)
    h2 = torch.tensor(cache.h_b[1, 0].astype(np.float64))          # h_2^(b)
    J = torch.autograd.functional.jacobian(
        lambda h: torch.tanh(P["W_b"] @ x[0] + P["U_b"] @ h), h2)
    assert np.allclose(v["jacobian"], J.detach().numpy(), atol=1e-12)


def _check_birnn_local_grad(v):
    assert v["error"] < 1e-6


def _check_birnn_weight_grad(v):
    assert v["vs_backward"] < 1e-12 and v["vs_fd"] < 1e-6
    torch, P, x, z = _torch_example()
    T, H = x.shape[0], P["U_f"].shape[0]
    hf, hb = [torch.zeros(H, dtype=torch.float64)], [torch.zeros(H, dtype=torch.float64)]
    for t in range(T):
        hf.append(torch.tanh(P["W_f"] @ x[t] + P["U_f"] @ hf[-1]))
    for t in reversed(range(T)):
        hb.insert(0, torch.tanh(P["W_b"] @ x[t] + P["U_b"] @ hb[0]))
    loss = sum(((z[t] - P["V_f"] @ hf[t + 1] - P["V_b"] @ hb[t]) ** 2).sum() for t in range(T))
    loss.backward()
    p, xn, zn = demo_rnn._example()
    _, cache = demo_rnn.rnn.birnn_forward(xn, p)
    terms = demo_rnn.bptt_terms(cache, zn)
    for k in ("W_b", "U_b", "W_f", "U_f"):
        assert np.allclose(terms[k], P[k].grad.numpy(), atol=1e-12), k


def _check_mha_adapters(v):
    n, d, h, r = 16, 32, 2, 4
    assert (v["n"], v["d"], v["h"], v["r"]) == (n, d, h, r)
    assert v["base"] == 3 * h * n * d * d and v["adapter"] == 6 * h * n * d * r
    assert v["course_adapter"] == n * d * r
    counted = dict((q.strip(), c) for q, c, *_ in demo_lora.lora_report.complexity_rows())
    assert counted["MHA adapter MACs (per head)"] == v["adapter"]


def _check_mha_dequant(v):
    assert v["value"] == 3 * 2 * 32 * 32 + 32 * 2 * 32 == 8192 and v["course"] == 4096
    counted = dict((q, c) for q, c, *_ in demo_lora.lora_report.complexity_rows())
    assert counted["QLoRA dequantized weights, MHA"] == v["value"]


def _check_quant_floor(v):
    assert 0.9 < v["floor"] <= 1.0 and v["nearest"] <= 0.5 + 1e-6


CHECKS = {k[len("_check_"):]: f for k, f in globals().items() if k.startswith("_check_")}


def test_every_correction_has_a_check():
    assert set(CHECKS) == set(BY_KEY)
    assert len(BY_KEY) == len(ERRATA)


@pytest.mark.parametrize("key", [e.key for e in ERRATA])
def test_correction_value(key):
    e = BY_KEY[key]
    CHECKS[key](e.value())
    text = e.text()
    assert text and "{v" not in text
    for field in (e.where, e.course, text):
        assert "issue" not in field.lower() and "document" not in field.lower()


def test_demo_prints_every_part_and_the_corrections(capsys):
    from fastdl.cli import main
    assert main(["demo", "--no-train", "--no-files"]) == 0
    out = capsys.readouterr().out
    assert "│ batch    │ mean      │ (2,)   │ 35/12   │ 2.9167 │ 2.916  │ ✗ see" in out
    assert '"a blue square"  log p = -9.9  [course: "a blue square" -9.9] ✓' in out
    assert "8.192e+31 TB" in out and "Where the course text is loose or wrong" in out
    for e in ERRATA:
        assert f"[{e.key}] {e.where}" in out
    assert "elements per statistic: batch 12, layer 6, instance 3" in out
    assert "1 group = layer norm, 2 groups of 1 channel = instance norm" in out
    assert "x1 [label=" in out                   # the DOT graph's attributes, not eaten
