"""Figures (matplotlib, the optional extra ``fastdl[plot]``), drawn off-screen."""
from __future__ import annotations

import os

import numpy as np


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a clear ImportError."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fastdl[plot]' (or matplotlib)"
                          ) from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def gradient_flow_figure(flow, path) -> str:
    """Two panels for the first sequence of a GradientFlow: ||∇_{h_t} L|| over t, and
    the spectral norm of k-step Jacobian products over k (log scale)."""
    plt = pyplot()
    first = (lambda a: a if a.ndim == 1 else a[0])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    t = np.arange(1, len(first(flow.grad_norm_f)) + 1)
    a1.semilogy(t, first(flow.grad_norm_f), "o-", label="forward  ‖∇h_t^(f) L‖")
    a1.semilogy(t, first(flow.grad_norm_b), "s-", label="backward ‖∇h_t^(b) L‖")
    a1.set_xlabel("step t")
    a1.set_title("gradient norm per step")
    a1.legend()
    k = np.arange(1, len(first(flow.jacobian_norm_f)) + 1)
    a2.semilogy(k, first(flow.jacobian_norm_f), "o-", label="forward  ‖∂h_T/∂h_{T-k}‖₂")
    a2.semilogy(k, first(flow.jacobian_norm_b), "s-", label="backward ‖∂h_1/∂h_{1+k}‖₂")
    a2.axhline(1.0, color="grey", lw=0.8)
    a2.set_xlabel("k (Jacobians multiplied)")
    a2.set_title("Jacobian products: below 1 vanish, above 1 explode")
    a2.legend()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ratio_bars(rows, path, backend: str) -> str:
    """One horizontal bar per case: ``backend``'s speed-up over the NumPy backend and
    over torch (log scale; 1 = as fast)."""
    plt = pyplot()
    mine = [r for r in rows if r.backend == backend]
    names = [r.case for r in mine]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.4), constrained_layout=True)
    y = np.arange(len(names))
    for off, key, label in ((-0.2, "vs_numpy", "× numpy"), (0.2, "vs_torch", "× torch")):
        vals = [getattr(r, key) or np.nan for r in mine]
        ax.barh(y + off, vals, height=0.38, label=label)
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed-up of the {backend} backend (their time / its time)")
    ax.legend()
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def birnn_gradient_flow(path) -> str:
    """The gradient flow of a 32-step bidirectional RNN at torch's initialization."""
    from fastdl import rnn
    from fastdl.rnn_analysis import gradient_flow
    rng = np.random.default_rng(1)
    p = rnn.BiRNNParams.init(16, 32, rng=rng, dtype=np.float64)
    y, cache = rnn.birnn_forward(rng.standard_normal((32, 16)), p)
    return gradient_flow(cache, dy=np.ones_like(y)).plot(path)
