"""Benchmark cases for the bidirectional tanh RNN: forward and backward of the loss.

Each case times ``birnn_loss_and_grads`` (forward, L = Σ_t ||z_t − y_t||², every
parameter's gradient) in float32 with d_in = hidden = d_out = d and no biases.
PyTorch's peer does the same with autograd: ``nn.RNN(d, d, bidirectional=True,
nonlinearity="tanh", bias=False)`` and ``nn.Linear(2d, d, bias=False)`` holding
the same weights, then ``torch.autograd.grad`` of the loss for the parameters.
Torch's x does not require a gradient, so neither side computes dx
(``need_dx=False``).  The padded case gives torch the same lengths through
``pack_padded_sequence(enforce_sorted=False)`` and applies the Linear to the
packed steps only.

The limit is the same number of multiply-adds as one large float32 matrix
product, measured in the same run: ``np.matmul`` of an (n × k) by a (k × hidden)
matrix, n the real (sequence, step) pairs and k = macs / (n · hidden).  Metrics:
GMAC/s (the analytic count over the median), the analytic counts, the counted
ones where the backend reports them (``MACs counted/analytic``), and the peak
memory traced by ``tracemalloc`` during one call against the analytic bytes of
``fastdl.complexity`` (``peak/analytic``).
"""
from __future__ import annotations

import importlib
import tracemalloc

import numpy as np

from fastdl import complexity
from fastdl.bench.case import Case, register
from fastdl.rnn import BiRNNParams, birnn_loss_and_grads

NEED_DX = False           # as torch: its x has requires_grad=False


def _lengths(T, B, seed):
    """B lengths spread evenly over [T/4, T] (both ends included), in shuffled order."""
    lens = np.linspace(max(1, T // 4), T, B).round().astype(np.int64)
    return np.random.default_rng(seed).permutation(lens)


def _counts(T, B, d, lengths):
    kw = dict(lengths=lengths)
    fwd = complexity.birnn_forward_macs(T, B, d, d, d, **kw)
    bwd = complexity.birnn_backward_macs(T, B, d, d, d, need_dx=NEED_DX, **kw)
    mem = (complexity.birnn_forward_bytes(T, B, d, d, d, **kw)
           + complexity.birnn_backward_bytes(T, B, d, d, d, need_dx=NEED_DX, **kw))
    return fwd, bwd, mem


def limit_shape(T, B, d, lengths=None):
    """(m, k, n) of the sgemm with the case's multiply-adds: m the real steps,
    n = hidden, k the rest (every MAC term has a factor of hidden)."""
    fwd, bwd, _ = _counts(T, B, d, lengths)
    m = complexity.birnn_steps(T, B, lengths)
    k, rest = divmod(fwd + bwd, m * d)
    assert rest == 0, (fwd + bwd, m, d)
    return m, k, d


def _last_macs(backend):
    """The backend's own count of its calling thread's last call, when it reports one."""
    if backend != "cython":
        return None
    try:
        mod = importlib.import_module("fastdl._backends.cython._rnn")
    except ImportError:
        return None
    fn = getattr(mod, "last_macs", None)
    return None if fn is None else fn()


def _peak_bytes(fn):
    """Peak bytes newly allocated (and traced: NumPy traces its arrays) during fn()."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was:
            tracemalloc.stop()


def _torch_peer(inp):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    p = inp["params"]
    H, I, O = p.hidden, p.d_in, p.d_out
    rnn = torch.nn.RNN(I, H, bidirectional=True, nonlinearity="tanh", bias=False)
    lin = torch.nn.Linear(2 * H, O, bias=False)
    with torch.no_grad():
        for name, a in (("weight_ih_l0", p.W_f), ("weight_hh_l0", p.U_f),
                        ("weight_ih_l0_reverse", p.W_b), ("weight_hh_l0_reverse", p.U_b)):
            getattr(rnn, name).copy_(torch.from_numpy(a))
        lin.weight.copy_(torch.from_numpy(np.concatenate([p.V_f, p.V_b], axis=1)))
    leaves = [*rnn.parameters(), *lin.parameters()]
    x, z = torch.from_numpy(inp["x"]), torch.from_numpy(inp["z"])
    if inp["lengths"] is None:
        def run():
            y = lin(rnn(x)[0])
            loss = ((z - y) ** 2).sum()
            return loss, torch.autograd.grad(loss, leaves)
        return run
    lens = torch.from_numpy(inp["lengths"])
    zp = pack_padded_sequence(z, lens, enforce_sorted=False).data   # the same order as x's

    def run_packed():
        out = rnn(pack_padded_sequence(x, lens, enforce_sorted=False))[0]
        loss = ((zp - lin(out.data)) ** 2).sum()
        return loss, torch.autograd.grad(loss, leaves)
    return run_packed


def torch_grads(run_result):
    """A torch peer's (loss, grads) as (float, {name: array}) in fastdl's names."""
    loss, (w_ih, w_hh, w_ih_r, w_hh_r, v) = run_result
    H = w_hh.shape[0]
    g = {"W_f": w_ih, "U_f": w_hh, "W_b": w_ih_r, "U_b": w_hh_r,
         "V_f": v[:, :H], "V_b": v[:, H:]}
    return float(loss.detach()), {k: t.numpy() for k, t in g.items()}


def birnn_case(T, B, d, *, padded=False, quick=False, targets=None, seed=0) -> Case:
    """The case for (T, B, d); ``padded``: lengths spread over [T/4, T]."""
    lengths = _lengths(T, B, seed + 1) if padded else None
    fwd, bwd, mem = _counts(T, B, d, lengths)
    m, k, n = limit_shape(T, B, d, lengths)

    def setup():
        rng = np.random.default_rng(seed)
        params = BiRNNParams.init(d, d, d, rng=rng, dtype=np.float32)
        x = rng.standard_normal((T, B, d), dtype=np.float32)
        z = rng.standard_normal((T, B, d), dtype=np.float32)
        if lengths is not None:
            pad = np.arange(T)[:, None] >= lengths[None, :]
            x[pad] = 0
            z[pad] = 0
        return {"x": x, "z": z, "params": params, "lengths": lengths}

    def call(inp, backend):
        return birnn_loss_and_grads(inp["x"], inp["z"], inp["params"], lengths=inp["lengths"],
                                    need_dx=NEED_DX, backend=backend)

    def limit(inp):
        rng = np.random.default_rng(seed + 2)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        return {"sgemm": lambda: np.matmul(a, b, out=out)}

    def metrics(inp, backend):
        out = {"MMAC fwd": fwd / 1e6, "MMAC bwd": bwd / 1e6}
        peak = _peak_bytes(lambda: call(inp, backend))
        out.update({"peak MiB": peak / 2 ** 20, "analytic MiB": mem / 2 ** 20,
                    "peak/analytic": peak / mem})
        call(inp, backend)                   # untraced: the count of a plain call
        counted = _last_macs(backend)
        if counted is not None:
            out["MACs counted/analytic"] = ((counted["birnn_fwd"] + counted["birnn_bwd"])
                                            / (fwd + bwd))
        return out

    n_steps = complexity.birnn_steps(T, B, lengths)
    itemsize = 4
    return Case(
        name=f"rnn/birnn/loss+grads/T{T}xB{B}xd{d}{'/padded' if padded else ''}/float32",
        op="birnn_bwd", setup=setup, call=call,
        # x, z and the parameters in; y, both directions' states and the gradients out
        bytes_read=itemsize * (2 * T * B * d + 6 * d * d),
        bytes_written=mem, flops=2 * (fwd + bwd), macs=fwd + bwd,
        torch=_torch_peer, quick=quick, targets=targets or {}, metrics=metrics, limit=limit,
        warm_s=0.15,            # OpenBLAS (NumPy's, the limit's) spins ~0.1 s after a call
        params={"T": T, "B": B, "d": d, "real_steps": n_steps, "need_dx": NEED_DX,
                "lengths": None if lengths is None else lengths.tolist(),
                "limit_sgemm_mkn": (m, k, n)},
    )


def _targets(vs_torch, vs_limit=None):
    t = {"vs_numpy": 5.0, "vs_torch": vs_torch}
    if vs_limit is not None:
        t["vs_limit"] = vs_limit
    return {"cython": t}


register(birnn_case(64, 32, 128, quick=True, targets=_targets(2.0)))
register(birnn_case(256, 1, 64, quick=True, targets=_targets(5.0)))
register(birnn_case(32, 64, 512, targets=_targets(1.2, vs_limit=1.25)))
# padding costs nothing: the kernel's own count of multiply-adds is the real steps'
register(birnn_case(64, 32, 128, padded=True,
                    targets={"cython": {"vs_numpy": 5.0, "max:MACs counted/analytic": 1.0}}))
