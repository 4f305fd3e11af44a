"""BiRNN kernels against their peers: float32 forward + backward of L = sum ||z - y||^2
(d_in = hidden = d_out = d, no biases, no dx, as torch autograd of the parameters).

    python bench/rnn_kernels_speed.py [--threads 2] [--rounds 3] [--shapes 64,32,128 ...]

Each (shape, implementation) runs in its own process (the OpenMP / OpenBLAS thread
pools of one implementation would otherwise spin beside the next), the processes
alternate round by round, and each reports the median and the best of 9 calls; the
table shows the medians over rounds.  Peers: torch.nn.RNN(bidirectional, tanh,
bias=False) + Linear with autograd, the NumPy backend, and the "sgemm limit": one
sgemm call with the same multiply-adds (fastdl.complexity), on the same threads.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

# the checkout this script is in, not another installed fastdl
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMPLS = ("cython", "torch", "numpy", "sgemm")


def child(impl, nth, T, B, d):
    from fastdl import complexity
    rng = np.random.default_rng(0)
    s = 1 / np.sqrt(d)
    x = rng.standard_normal((T, B, d)).astype(np.float32)
    z = rng.standard_normal((T, B, d)).astype(np.float32)
    w = tuple(rng.uniform(-s, s, (d, d)).astype(np.float32) for _ in range(6))
    none = (None,) * 6
    if impl in ("cython", "numpy"):
        if impl == "cython":
            from fastdl._backends.cython import _rnn as mod
            extra = (nth,)
        else:
            from fastdl._backends.numpy import rnn as mod
            extra = ()

        def f():
            y, hf, hb = mod.birnn_fwd(x, *w, *none, *extra)
            mod.birnn_bwd(-2 * (z - y), x, hf, hb, *w, *none[:3], False, *extra)
    elif impl == "torch":
        import torch
        torch.set_num_threads(nth)
        rnn = torch.nn.RNN(d, d, bidirectional=True, bias=False)
        lin = torch.nn.Linear(2 * d, d, bias=False)
        xt, zt = torch.from_numpy(x), torch.from_numpy(z)

        def f():
            for p in list(rnn.parameters()) + list(lin.parameters()):
                p.grad = None
            ((zt - lin(rnn(xt)[0])) ** 2).sum().backward()
    else:
        import scipy.linalg.blas as sb
        from fastdl._backends.cython import _cpu
        macs = (complexity.birnn_forward_macs(T, B, d, d, d)
                + complexity.birnn_backward_macs(T, B, d, d, d, need_dx=False))
        K = max(1, macs // (T * B * d))
        a = np.asfortranarray(rng.standard_normal((T * B, K)).astype(np.float32))
        b = np.asfortranarray(rng.standard_normal((K, d)).astype(np.float32))
        _cpu.blas_threads(nth)

        def f():
            sb.sgemm(1.0, a, b)
    f()
    ts = []
    for _ in range(3 if impl == "numpy" else 9):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    print(json.dumps([float(np.median(ts)) * 1e3, float(np.min(ts)) * 1e3]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", nargs="+", default=["64,32,128", "256,1,64", "32,64,512"])
    ap.add_argument("--child", nargs=5)
    a = ap.parse_args()
    if a.child:
        impl, *dims = a.child
        return child(impl, *map(int, dims))
    res = {}
    for _ in range(a.rounds):
        for shape in a.shapes:
            for impl in IMPLS:
                out = subprocess.run([sys.executable, __file__, "--child", impl, str(a.threads),
                                      *shape.split(",")], capture_output=True, text=True,
                                     env=dict(os.environ), check=True).stdout
                res.setdefault((shape, impl), []).append(json.loads(out.splitlines()[-1]))
    print(f"load average {os.getloadavg()[0]:.2f}; ms, median of rounds of (median, best of "
          f"9 calls); {a.threads} threads")
    print(f"{'(T, B, d)':>12} " + " ".join(f"{i:>16}" for i in IMPLS) + "  torch/ours")
    for shape in a.shapes:
        m = {i: np.median(np.array(res[(shape, i)]), axis=0) for i in IMPLS}
        print(f"{shape:>12} " + " ".join(f"{m[i][0]:7.2f} ({m[i][1]:6.2f})" for i in IMPLS)
              + f"  {m['torch'][0] / m['cython'][0]:.2f} ({m['torch'][1] / m['cython'][1]:.2f})")


if __name__ == "__main__":
    main()
