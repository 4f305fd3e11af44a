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
