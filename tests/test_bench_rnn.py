"""The BiRNN benchmark cases: registered with the stated shapes and targets, their
sgemm limit doing the same multiply-adds, their torch peer computing the same loss
and gradients, and a tiny instance running through the runner."""
import numpy as np
import pytest

from fastdl.bench import all_cases, cases_rnn, runner
from fastdl.bench.contention import contention_cases

NAMES = {"rnn/birnn/loss+grads/T64xB32xd128/float32",
         "rnn/birnn/loss+grads/T256xB1xd64/float32",
         "rnn/birnn/loss+grads/T32xB64xd512/float32",
         "rnn/birnn/loss+grads/T64xB32xd128/padded/float32"}


def test_the_cases_register_with_their_targets():
    cases = {c.name: c for c in all_cases(only="rnn")}
    assert set(cases) == NAMES
    assert {c.name for c in all_cases(quick=True, only="rnn")} == {
        "rnn/birnn/loss+grads/T64xB32xd128/float32", "rnn/birnn/loss+grads/T256xB1xd64/float32"}
    for c in cases.values():
        assert c.op == "birnn_bwd" and c.torch is not None
        assert c.targets["cython"]["vs_numpy"] == 5.0
        assert c.params["need_dx"] is False
    vs_torch = {n: c.targets["cython"].get("vs_torch") for n, c in cases.items()}
    assert vs_torch == {"rnn/birnn/loss+grads/T64xB32xd128/float32": 2.0,
                        "rnn/birnn/loss+grads/T256xB1xd64/float32": 5.0,
                        "rnn/birnn/loss+grads/T32xB64xd512/float32": 1.2,
                        "rnn/birnn/loss+grads/T64xB32xd128/padded/float32": None}
    big = cases["rnn/birnn/loss+grads/T32xB64xd512/float32"]
    assert big.targets["cython"]["vs_limit"] == 1.25
    padded = cases["rnn/birnn/loss+grads/T64xB32xd128/padded/float32"]
    assert padded.targets["cython"]["max:MACs counted/analytic"] == 1.0
    lengths = padded.params["lengths"]
    assert len(lengths) == 32 and min(lengths) == 16 and max(lengths) == 64
    assert padded.params["real_steps"] == sum(lengths) < 64 * 32
    assert "rnn/birnn/loss+grads/T64xB32xd128/float32" in {c.name for c in contention_cases()}


@pytest.mark.parametrize("T,B,d", [(64, 32, 128), (256, 1, 64), (32, 64, 512)])
def test_the_limit_does_the_cases_multiply_adds(T, B, d):
    # without dx, per step and direction: 3d² forward, 5d² backward
    macs = 2 * T * B * 8 * d * d
    m, k, n = cases_rnn.limit_shape(T, B, d)
    assert (m, k, n) == (T * B, 16 * d, d) and m * k * n == macs
    case = next(c for c in all_cases(only=f"rnn/birnn/loss+grads/T{T}xB{B}xd{d}/float32"))
    assert case.macs == macs and case.params["limit_sgemm_mkn"] == (m, k, n)


def test_the_padded_limit_counts_the_real_steps():
    lengths = [3, 1, 4]
    m, k, n = cases_rnn.limit_shape(4, 3, 5, lengths)
    assert m == 8 and m * k * n == 2 * 8 * 8 * 25


@pytest.mark.parametrize("padded", [False, True])
def test_the_torch_peer_computes_the_same_loss_and_gradients(padded):
    pytest.importorskip("torch")
    case = cases_rnn.birnn_case(6, 4, 5, padded=padded)
    inp = case.setup()
    loss, grads = case.call(inp, "numpy")
    t_loss, t_grads = cases_rnn.torch_grads(case.torch(inp)())
    assert t_loss == pytest.approx(loss, rel=1e-5)
    for name, g in t_grads.items():
        np.testing.assert_allclose(g, getattr(grads, name), rtol=1e-4, atol=1e-5)


def test_peak_bytes_sees_numpy_allocations():
    peak = cases_rnn._peak_bytes(lambda: np.ones(1 << 20, np.float32))
    assert 4 << 20 <= peak < 5 << 20


def test_a_tiny_case_runs_through_the_runner():
    case = cases_rnn.birnn_case(4, 2, 3, padded=True, targets={"numpy": {"vs_limit": 1e9}})
    rows = {r.backend: r for r in runner.run_case(case, rounds=1)}
    assert "numpy" in rows
    try:
        import torch  # noqa: F401
        assert "torch" in rows and rows["numpy"].vs_torch > 0
    except ImportError:
        assert "torch" not in rows
    for r in rows.values():
        assert r.metrics["GMAC/s"] == pytest.approx(case.macs / r.median_s / 1e9)
        assert r.limit_kind == "sgemm" and r.vs_limit > 0
    m = rows["numpy"].metrics
    assert m["MMAC fwd"] * 1e6 + m["MMAC bwd"] * 1e6 == pytest.approx(case.macs)
    assert m["peak MiB"] > 0 and m["peak/analytic"] == pytest.approx(
        m["peak MiB"] / m["analytic MiB"])
    assert "MACs counted/analytic" not in m          # the NumPy backend does not count
    assert rows["numpy"].checks[0]["met"] is True
