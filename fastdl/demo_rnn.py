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


def _gradcheck_errors(p, x, z) -> dict:
    names = list(p.arrays())

    def fn(**a):
        loss, g = rnn.birnn_loss_and_grads(x, z, rnn.BiRNNParams(**a))
        return loss, g.params()
    return gradcheck(fn, {n: p.arrays()[n] for n in names}).max_rel_error


def _central(f, v, eps=1e-6) -> np.ndarray:
    """Central differences of f (vector -> scalar or vector) at v: (len f, len v)."""
    cols = []
    for j in range(v.size):
        e = np.zeros_like(v)
        e[j] = eps
        cols.append((np.atleast_1d(f(v + e)) - np.atleast_1d(f(v - e))) / (2 * eps))
    return np.stack(cols, axis=-1)


def _state(cache, direction, t):
    """h_t of a direction (t = 1..T) of a one-sequence cache, float64."""
    h = cache.h_f if direction == "f" else cache.h_b
    return h[t - 1, 0].astype(np.float64)


def _step(p, direction, x_t, h_prev):
    W, U, b = (p.W_f, p.U_f, p.b_f) if direction == "f" else (p.W_b, p.U_b, p.b_b)
    a = W @ x_t + U @ h_prev + (0 if b is None else b)
    return np.tanh(a)


def _loss_from(p, cache, x, z, direction, t, h_t) -> float:
    """L as a function of h_t of one direction: that direction's later states
    (later in its own order) recomputed from h_t, the other direction's kept."""
    T = cache.T
    hf = [_state(cache, "f", s) for s in range(1, T + 1)]
    hb = [_state(cache, "b", s) for s in range(1, T + 1)]
    hs = hf if direction == "f" else hb
    hs[t - 1] = h_t
    order = range(t + 1, T + 1) if direction == "f" else range(t - 1, 0, -1)
    for s in order:
        prev = hs[s - 2] if direction == "f" else hs[s]
        hs[s - 1] = _step(p, direction, x[s - 1], prev)
    c = 0 if p.c is None else p.c
    return float(sum(np.sum((z[s] - p.V_f @ hf[s] - p.V_b @ hb[s] - c) ** 2) for s in range(T)))


def local_gradient_check() -> dict:
    """∇_{h_t} L_t of both directions (-2 Vᵀ(z_t - y_t)) against central differences of
    L_t = ||z_t - V(f) h_t(f) - V(b) h_t(b)||² in h_t: the largest difference."""
    p, x, z = _example()
    _, cache = rnn.birnn_forward(x, p)
    g_f, g_b = hidden_loss_grads(cache, z)
    err = 0.0
    for t in range(1, T + 1):
        hf, hb = _state(cache, "f", t), _state(cache, "b", t)
        fd_f = _central(lambda h: np.sum((z[t - 1] - p.V_f @ h - p.V_b @ hb) ** 2), hf)[0]
        fd_b = _central(lambda h: np.sum((z[t - 1] - p.V_f @ hf - p.V_b @ h) ** 2), hb)[0]
        err = max(err, float(np.max(np.abs(fd_f - g_f[t - 1]))),
                  float(np.max(np.abs(fd_b - g_b[t - 1]))))
    return {"error": err}


def total_gradient_errors(p, x, z, cache, terms) -> list:
    """Per step t, the largest difference between the recursion's ∇_{h_t} L (both
    directions) and central differences of L in h_t."""
    out = []
    for t in range(1, T + 1):
        e = 0.0
        for d, key in (("f", "total_f"), ("b", "total_b")):
            fd = _central(lambda h: _loss_from(p, cache, x, z, d, t, h), _state(cache, d, t))[0]
            e = max(e, float(np.max(np.abs(fd - terms[key][t - 1, 0]))))
        out.append(e)
    return out


def backward_jacobian_check() -> dict:
    """∂h_1(b)/∂h_2(b): the library's against central differences of the step
    h_1(b) = tanh(W(b) x_1 + U(b) h_2(b)), and the form written with h_{t+1}(b)."""
    p, x, z = _example()
    _, cache = rnn.birnn_forward(x, p)
    J = jacobian_backward(cache, 2)
    fd = _central(lambda h: _step(p, "b", x[0], h), _state(cache, "b", 2))
    h3 = _state(cache, "b", 3)
    written = (1 - h3 * h3)[:, None] * p.U_b
    return {"jacobian": J, "finite_difference": fd, "error": float(np.max(np.abs(J - fd))),
            "written_error": float(np.max(np.abs(written - fd)))}


def forward_jacobian_error() -> float:
    """∂h_2(f)/∂h_1(f) against central differences of h_2(f) = tanh(W(f) x_2 + U(f) h_1(f))."""
    p, x, z = _example()
    _, cache = rnn.birnn_forward(x, p)
    fd = _central(lambda h: _step(p, "f", x[1], h), _state(cache, "f", 1))
    return float(np.max(np.abs(jacobian_forward(cache, 1) - fd)))


def weight_gradient_check() -> dict:
    """∇W(b) L and ∇U(f) L summed term by term, against the library's backward and
    central differences of the loss (relative)."""
    p, x, z = _example()
    _, cache = rnn.birnn_forward(x, p)
    _, grads = rnn.birnn_loss_and_grads(x, z, p)
    terms = bptt_terms(cache, z)
    rel = _gradcheck_errors(p, x, z)
    return {"vs_backward": max(float(np.max(np.abs(terms[k] - getattr(grads, k))))
                               for k in ("W_b", "U_b", "W_f", "U_f")),
            "vs_fd": max(rel[k] for k in ("W_b", "U_b", "W_f", "U_f"))}


def gradients(console: Console) -> None:
    p, x, z = _example()
    y, cache = rnn.birnn_forward(x, p)
    loss, grads = rnn.birnn_loss_and_grads(x, z, p)
    console.print(f"\nBackpropagation through the bidirectional RNN h_t(f) = tanh(W(f) x_t + "
                  f"U(f) h_(t-1)(f)), h_t(b) = tanh(W(b) x_t + U(b) h_(t+1)(b)), y_t = V(f) h_t(f)"
                  f" + V(b) h_t(b), T = {T} steps, d = {D}, no biases, random weights (seed 0): "
                  f"L = Σ_t ||z_t - y_t||² = {loss:.4f}")
    g_f, g_b = hidden_loss_grads(cache, z)
    terms = bptt_terms(cache, z)
    fd = total_gradient_errors(p, x, z, cache, terms)
    table = Table(title="Gradients with respect to the hidden states, term by term")
    for col in ("t", "∇h_t(f) L_t = -2 V(f)ᵀ(z_t - y_t)", "∇h_t(f) L",
                "∇h_t(b) L_t = -2 V(b)ᵀ(z_t - y_t)", "∇h_t(b) L", "vs finite diff."):
        table.add_column(col)
    for t in range(T):
        table.add_row(str(t + 1), _fmt(g_f[t]), _fmt(terms["total_f"][t, 0]), _fmt(g_b[t]),
                      _fmt(terms["total_b"][t, 0]), f"{fd[t]:.1e}")
    console.print(table)
    console.print("  recursion: ∇h_t(f) L = ∇h_t(f) L_t + (∂h_{t+1}(f)/∂h_t(f))ᵀ ∇h_{t+1}(f) L; "
                  "∇h_t(b) L = ∇h_t(b) L_t + (∂h_{t-1}(b)/∂h_t(b))ᵀ ∇h_{t-1}(b) L "
                  "(∇h_t L_t checked alone: "
                  f"{local_gradient_check()['error']:.1e} from finite differences)")
    jb = backward_jacobian_check()
    console.print("  ∂h_2(f)/∂h_1(f) = diag(1 - h_2(f)²) U(f) =\n"
                  + _fmt(jacobian_forward(cache, 1))
                  + f"\n  (finite differences of the step: {forward_jacobian_error():.1e})")
    console.print(f"  ∂h_1(b)/∂h_2(b) = diag(1 - h_1(b)²) U(b) =\n{_fmt(jb['jacobian'])}\n"
                  f"  (finite differences of the step: {jb['error']:.1e})")
    w = weight_gradient_check()
    console.print(f"  ∇W(b) L = Σ_t diag(1 - h_t(b)²) ∇h_t(b) L x_tᵀ =\n{_fmt(terms['W_b'])}")
    console.print(f"  ∇U(f) L = Σ_t diag(1 - h_t(f)²) ∇h_t(f) L h_(t-1)(f)ᵀ =\n"
                  f"{_fmt(terms['U_f'])}")
    console.print(f"  the four weight gradients of the course (W(b), U(b), W(f), U(f)) summed "
                  f"term by term vs birnn_backward (which never forms a Jacobian): largest "
                  f"difference {w['vs_backward']:.1e}; central finite differences of L agree "
                  f"to {w['vs_fd']:.1e} (relative)")
    T_, B_ = cache.T, cache.B
    console.print(f"  multiply-adds: forward {complexity.birnn_forward_macs(T_, B_, D, D, D)}"
                  f" = 2·T·3d², backward {complexity.birnn_backward_macs(T_, B_, D, D, D)}"
                  f" = 2·T·6d² (with ∇x)")


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
        # markup=False: DOT's [label=...] attributes are not console markup
        console.print("\nThe bidirectional RNN unrolled for 3 steps (Graphviz DOT; x_t, "
                      "h_t(f), h_t(b), y_t, with the initial states h_0(f), h_4(b)):")
        console.print(str(dot), markup=False, highlight=False)
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
