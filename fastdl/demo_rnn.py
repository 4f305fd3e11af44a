"""``fastdl demo``, bidirectional RNN part: the course's backpropagation-through-time
exercise on a T = 3 example, checked term by term, and its unrolled graph written."""
from __future__ import annotations

import os
import shutil

import numpy as np
from rich.console import Console
from rich.table import Table

from fastdl import complexity, rnn
from fastdl.rnn_analysis import (bptt_terms, gradcheck, gradient_flow, hidden_loss_grads,
                                 jacobian_backward, jacobian_forward, unrolled_graph)

D, T = 3, 3


def _fmt(a) -> str:
    return np.array2string(np.asarray(a), precision=3, floatmode="fixed", suppress_small=True,
                           separator=" ", max_line_width=200)


def _example():
    rng = np.random.default_rng(0)
    p = rnn.BiRNNParams.init(D, D, rng=rng, dtype=np.float64)
    return p, rng.standard_normal((T, D)), rng.standard_normal((T, D))


def _gradcheck_error(p, x, z) -> float:
    names = list(p.arrays())

    def fn(**a):
        loss, g = rnn.birnn_loss_and_grads(x, z, rnn.BiRNNParams(**a))
        return loss, g.params()
    res = gradcheck(fn, {n: p.arrays()[n] for n in names})
    return max(res.max_rel_error.values())


def gradients(console: Console) -> None:
    p, x, z = _example()
    y, cache = rnn.birnn_forward(x, p)
    loss, grads = rnn.birnn_loss_and_grads(x, z, p)
    console.print(f"\nBidirectional RNN, T = {T} steps, d = {D} (d_in = hidden = d_out, no "
                  f"biases, seed 0): L = Σ_t ||z_t - y_t||² = {loss:.4f}")
    g_f, g_b = hidden_loss_grads(cache, z)
    terms = bptt_terms(cache, z)
    table = Table(title="Gradients with respect to the hidden states")
    for col in ("t", "∇h_t(f) L_t = -2 V(f)ᵀ(z_t - y_t)", "∇h_t(f) L",
                "∇h_t(b) L_t = -2 V(b)ᵀ(z_t - y_t)", "∇h_t(b) L"):
        table.add_column(col)
    for t in range(T):
        table.add_row(str(t + 1), _fmt(g_f[t]), _fmt(terms["total_f"][t, 0]), _fmt(g_b[t]),
                      _fmt(terms["total_b"][t, 0]))
    console.print(table)
    console.print("  recursion: ∇h_t(f) L = ∇h_t(f) L_t + (∂h_{t+1}(f)/∂h_t(f))ᵀ ∇h_{t+1}(f) L; "
                  "∇h_t(b) L = ∇h_t(b) L_t + (∂h_{t-1}(b)/∂h_t(b))ᵀ ∇h_{t-1}(b) L")
    console.print(f"  ∂h_2(f)/∂h_1(f) = diag(1 - h_2(f)²) U(f) =\n{_fmt(jacobian_forward(cache, 1))}")
    console.print(f"  ∂h_2(b)/∂h_3(b) = diag(1 - h_2(b)²) U(b) =\n{_fmt(jacobian_backward(cache, 3))}")
    diff_w = float(np.max(np.abs(terms["W_b"] - grads.W_b)))
    diff_u = float(np.max(np.abs(terms["U_f"] - grads.U_f)))
    console.print(f"  ∇W(b) L = Σ_t diag(1 - h_t(b)²) ∇h_t(b) L x_tᵀ =\n{_fmt(terms['W_b'])}")
    console.print(f"  ∇U(f) L = Σ_t diag(1 - h_t(f)²) ∇h_t(f) L h_(t-1)(f)ᵀ =\n"
                  f"{_fmt(terms['U_f'])}")
    console.print(f"  the same from birnn_backward (which never forms a Jacobian): largest "
                  f"difference {diff_w:.1e} (∇W(b)), {diff_u:.1e} (∇U(f)); central finite "
                  f"differences agree to {_gradcheck_error(p, x, z):.1e} (relative)")
    T_, B_ = cache.T, cache.B
    console.print(f"  multiply-adds: forward {complexity.birnn_forward_macs(T_, B_, D, D, D)}"
                  f" = 2·T·3d², backward {complexity.birnn_backward_macs(T_, B_, D, D, D)}"
                  f" = 2·T·6d² (with ∇x)")
    console.print("  Corrections to the usual write-up of this exercise:")
    console.print("   - the mirror of ∂h_{t+1}(f)/∂h_t(f) is ∂h_{t-1}(b)/∂h_t(b) = "
                  "diag(1 - h_{t-1}(b)²) U(b); ∂h_{t+1}(b)/∂h_t(b) is 0, since h_{t+1}(b) is "
                  "computed before h_t(b)")
    console.print("   - in ∇W(b) L the vector diag(1 - h_t(b)²) ∇h_t(b) L (a column) multiplies "
                  "x_tᵀ; ∇U(b) L uses h_{t+1}(b), the initial state h_{T+1}(b) at t = T")


def flow(console: Console, out_dir: str | None) -> None:
    rng = np.random.default_rng(1)
    p = rnn.BiRNNParams.init(16, 32, rng=rng, dtype=np.float64)
    x = rng.standard_normal((32, 16))
    y, cache = rnn.birnn_forward(x, p)
    gf = gradient_flow(cache, dy=np.ones_like(y))
    ks = [1, 2, 4, 8, 16, 32]
    console.print("\nGradient flow, T = 32, hidden 32, torch's initialization: "
                  "||∂h_T(f)/∂h_(T-k)(f)||₂ for k = " + ", ".join(map(str, ks)) + ": "
                  + ", ".join(f"{gf.jacobian_norm_f[k - 1]:.2e}" for k in ks)
                  + f"  (×{gf.rate('f'):.2f} per step: the gradient vanishes)")
    if out_dir is None:
        return
    try:
        path = gf.plot(os.path.join(out_dir, "gradient_flow.png"))
        console.print(f"  wrote {path}")
    except ImportError as exc:
        console.print(f"  no plot: {exc}")


def graph(console: Console, out_dir: str | None) -> None:
    dot = unrolled_graph(3)
    if out_dir is None:
        console.print("\nThe unrolled graph (DOT):\n" + dot)
        return
    path = os.path.join(out_dir, "birnn_unrolled_T3.dot")
    with open(path, "w") as f:
        f.write(dot)
    console.print(f"\nThe bidirectional RNN unrolled for 3 steps: wrote {path}")
    if shutil.which("dot") is None:
        console.print("  (install Graphviz, e.g. apt install graphviz, to get the SVG too)")
        return
    svg = dot.render(os.path.join(out_dir, "birnn_unrolled_T3.svg"))
    console.print(f"  wrote {svg}")


def run(console: Console, out_dir: str | None) -> None:
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
    gradients(console)
    flow(console, out_dir)
    graph(console, out_dir)
