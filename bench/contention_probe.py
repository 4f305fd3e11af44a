"""Contention probe: fastdl ops at the default thread count against 1 thread, on
the machine as it is ("idle") and with busy processes beside them.

    python bench/contention_probe.py [--reps 15] [--ops topk,layer_norm]
                                     [--idle-only | --busy-only] [--busy N] [--fixed-teams]

"busy" starts N processes spinning in Python (default: one per CPU) and always
stops them, also on Ctrl-C.  The default and the 1-thread runs alternate call
by call, so a change of the machine's load hits both alike.  Prints per op the
medians (ms) and default / 1 thread; the thread policy's goal is a ratio of at
most 1.3 under contention and the multi-threaded speed-up when idle.  Not a
pytest file: run it on a quiet machine and read the load it prints.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import fastdl
from fastdl import decode, quant


def cases():
    rng = np.random.default_rng(0)
    x6 = rng.standard_normal(10**6).astype(np.float32).reshape(1, -1)
    ns = rng.standard_normal((64, 256, 1024)).astype(np.float32)
    ln = rng.standard_normal((512, 4096)).astype(np.float32)
    bn = rng.standard_normal((32, 64, 1024)).astype(np.float32)
    ls = rng.standard_normal((8, 50257)).astype(np.float32)
    bl = rng.standard_normal((8, 50257)).astype(np.float32)
    bs = rng.standard_normal(8).astype(np.float32)
    W = rng.standard_normal((4096, 4096)).astype(np.float32)
    q8 = quant.quantize(W, 8, block_size=64)
    q4 = quant.quantize(W, 4, block_size=64)
    x1 = rng.standard_normal((1, 4096)).astype(np.float32)
    x64 = rng.standard_normal((64, 4096)).astype(np.float32)
    return {
        "topk": lambda: decode.topk(x6, 10),
        "norm_stats": lambda: fastdl.norm_stats(ns, "layer"),
        "layer_norm": lambda: fastdl.layer_norm(ln, 4096),
        "batch_norm": lambda: fastdl.batch_norm(bn, None, None, training=True),
        "log_softmax": lambda: decode.log_softmax(ls),
        "beam_topk": lambda: decode.beam_topk(bl, bs, 16),
        "quantize_int4": lambda: quant.quantize(W, 4, block_size=64),
        "qmatmul_n1_int8": lambda: quant.qmatmul(x1, q8),
        "qmatmul_n1_int4": lambda: quant.qmatmul(x1, q4),
        "qmatmul_n64_int8": lambda: quant.qmatmul(x64, q8),
        "qmatmul_n64_int4": lambda: quant.qmatmul(x64, q4),
    }


def timeit2(f, reps, default):
    """medians (ms) at ``default`` threads and at 1, alternating every call so
    that changes of the machine's load hit both alike"""
    ts = {default: [], 1: []}
    for nt in (default, 1):
        fastdl.set_num_threads(nt)
        f()
    for _ in range(reps):
        for nt in (default, 1):
            fastdl.set_num_threads(nt)
            t = time.perf_counter()
            f()
            ts[nt].append(time.perf_counter() - t)
    fastdl.set_num_threads(default)
    return [statistics.median(ts[default]) * 1e3, statistics.median(ts[1]) * 1e3]


def busy_start(n):
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def busy_stop(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run(ops, reps, default):
    return {name: timeit2(f, reps, default) for name, f in ops.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--ops", default="")
    ap.add_argument("--idle-only", action="store_true")
    ap.add_argument("--busy-only", action="store_true")
    ap.add_argument("--busy", type=int, default=os.cpu_count(), help="busy processes")
    ap.add_argument("--fixed-teams", action="store_true",
                    help="teams ignore the load (the kernels' own multi-threaded speed)")
    a = ap.parse_args()
    if a.fixed_teams:
        from fastdl._backends.cython import _cpu
        _cpu.set_load_adaptive(False)
    ops = cases()
    if a.ops:
        ops = {k: v for k, v in ops.items() if k in a.ops.split(",")}
    default = fastdl.get_num_threads()
    print(f"default threads {default}, cpus {os.cpu_count()}, "
          f"load {open('/proc/loadavg').read().split()[:3]}")
    idle = {} if a.busy_only else run(ops, a.reps, default)
    busy = {}
    if not a.idle_only:
        procs = busy_start(a.busy)
        try:
            time.sleep(0.3)
            busy = run(ops, a.reps, default)
        finally:
            busy_stop(procs)
    print(f"{'op':18} {'idle d':>8} {'idle 1':>8} {'ratio':>6} | {'busy d':>8} {'busy 1':>8} {'ratio':>6}")
    for name in ops:
        i = idle.get(name, [float('nan')] * 2)
        b = busy.get(name, [float('nan')] * 2)
        print(f"{name:18} {i[0]:8.3f} {i[1]:8.3f} {i[0] / i[1]:6.2f} | "
              f"{b[0]:8.3f} {b[1]:8.3f} {b[0] / b[1]:6.2f}")


if __name__ == "__main__":
    main()
