"""bf16 compute speed at n = 1, 4096 x 4096 (opt in: FASTDL_BF16_BENCH=1): medians
of interleaved runs of the kernel (2 threads), NumPy float32 x @ W, the exact
qmatmul and bitsandbytes' fused CPU 4-bit GEMV at 1 and 2 torch threads; the kernel
must be at least as fast as bitsandbytes' best.  ``python tests/test_quant_bf16_speed.py``
prints the table."""
import os
import time

import numpy as np
import pytest

import fastdl
from fastdl.quant import qmatmul, quantize

pytestmark = pytest.mark.skipif(os.environ.get("FASTDL_BF16_BENCH") != "1",
                                reason="timing run: set FASTDL_BF16_BENCH=1")


def measure(d=4096, rounds=25, reps=5, threads=2):
    import torch
    import bitsandbytes.functional as bnbf
    from fastdl._backends.cython import _qbf16
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((d, d)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, d)).astype(np.float32)
    qn = quantize(w, bits=4, scheme="nf4", block_size=64, double_quant=True)
    qi = quantize(w, bits=4, scheme="absmax", block_size=64)
    qw, qs = bnbf.quantize_4bit(torch.from_numpy(np.ascontiguousarray(w.T)), blocksize=64,
                                quant_type="nf4", compress_statistics=True)
    pw, ps = bnbf._convert_weight_packed_for_cpu(qw, qs)
    xb = torch.from_numpy(x).to(torch.bfloat16)
    out = np.empty((1, d), np.float32)

    def bnb(nt):
        def run():
            torch.set_num_threads(nt)
            return bnbf.gemv_4bit(xb, pw, state=ps)
        return run

    cases = {
        "bf16 NF4+dq": lambda: _qbf16.bf16_qmatmul(x, qn, out, threads),
        "bf16 NF4+dq 1 thread": lambda: _qbf16.bf16_qmatmul(x, qn, out, 1),
        "bf16 int4": lambda: _qbf16.bf16_qmatmul(x, qi, out, threads),
        "numpy f32 x@W": lambda: x @ w,
        "exact NF4+dq": lambda: qmatmul(x, qn),
        "exact int4": lambda: qmatmul(x, qi),
        "bnb NF4+dq 1 thread": bnb(1),
        "bnb NF4+dq 2 threads": bnb(2),
    }
    old = fastdl.get_num_threads()
    fastdl.set_num_threads(threads)
    try:
        for f in cases.values():
            f()
        times = {k: [] for k in cases}
        for _ in range(rounds):
            for k, f in cases.items():
                t = time.perf_counter()
                for _ in range(reps):
                    f()
                times[k].append((time.perf_counter() - t) / reps)
                # idle OpenMP workers spin a while after a call (torch's, fastdl's):
                # the next case must not run beside them
                time.sleep(0.02)
    finally:
        fastdl.set_num_threads(old)
    return {k: float(np.median(v)) for k, v in times.items()}


def test_bf16_at_least_bitsandbytes_speed():
    pytest.importorskip("bitsandbytes")
    from fastdl._backends.cython import _qbf16
    if not _qbf16.bf16_available()[0]:
        pytest.skip(_qbf16.bf16_available()[1])
    t = measure()
    best = min(t["bnb NF4+dq 1 thread"], t["bnb NF4+dq 2 threads"])
    assert min(t["bf16 NF4+dq"], t["bf16 NF4+dq 1 thread"]) <= best, t


if __name__ == "__main__":
    res = measure()
    base = res["numpy f32 x@W"]
    for k, v in res.items():
        print(f"{k:22s} {v * 1e3:7.3f} ms   x@W / this {base / v:5.2f}")
