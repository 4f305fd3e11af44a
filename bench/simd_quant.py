"""qmatmul at the AVX-512 level against the AVX2 level, in one process on one build.

    python bench/simd_quant.py [--repeats 15] [--threads 1,2] [--n 1,4,64]
    python bench/simd_quant.py --decode [--panel 64]

``--decode``: the many-row path's panel decoder instead (storage rows to float32
values, one thread, panels of ``--panel`` rows reused so they stay in cache), in ns
per weight at every level this machine runs.

For each format (int8 / int4 / NF4 / NF4 with double quantization, blocks of 64,
4096x4096 float32) and n, the two
levels are timed in alternating bursts (so a change of machine load hits both); the
figures are medians over the bursts, the ratio is avx2 time / avx512 time (> 1: the
AVX-512 kernels are faster).
"""
import argparse
import os
import statistics
import sys
import time

# run from a checkout: import its fastdl (and build), not an installed one
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

import fastdl  # noqa: E402
from fastdl.quant import qmatmul, quantize
from fastdl.testing import has_simd, simd, threads

D = 4096
FORMATS = {"int8": dict(bits=8, block_size=64), "int4": dict(bits=4, block_size=64),
           "nf4": dict(bits=4, scheme="nf4", block_size=64),
           "nf4-dq": dict(bits=4, scheme="nf4", block_size=64, double_quant=True)}


def burst(fn, min_s=0.05):
    fn()
    k, t0 = 0, time.perf_counter()
    while True:
        fn()
        k += 1
        t = time.perf_counter() - t0
        if t >= min_s:
            return t / k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--n", default="1,4,64")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--transpose", action="store_true")
    ap.add_argument("--no-adapt", action="store_true",
                    help="team sizes from the thread count alone (no shrinking under load)")
    ap.add_argument("--decode", action="store_true", help="time the panel decoder instead")
    ap.add_argument("--panel", type=int, default=64)
    a = ap.parse_args()
    if a.decode:
        return decode(a)
    if a.no_adapt:
        from fastdl._backends.cython import _cpu
        _cpu.set_load_adaptive(False)
    if not has_simd("avx512"):
        raise SystemExit("this CPU (or build) has no AVX-512 level")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((D, D), dtype=np.float32) * 0.02
    print(f"{'format':6} {'n':>3} {'thr':>3} {'avx2 ms':>9} {'avx512 ms':>9} {'ratio':>6}")
    for fmt in a.formats.split(","):
        q = quantize(w, **FORMATS[fmt], backend="cython")
        for n in map(int, a.n.split(",")):
            x = rng.standard_normal((n, D), dtype=np.float32)
            out = np.empty((n, D), np.float32)
            for nt in map(int, a.threads.split(",")):
                t = {"avx2": [], "avx512": []}
                with threads(nt):
                    for _ in range(a.repeats):
                        for lv in t:
                            with simd(lv):
                                t[lv].append(burst(lambda: qmatmul(
                                    x, q, transpose=a.transpose, out=out, backend="cython")))
                m2, m5 = statistics.median(t["avx2"]), statistics.median(t["avx512"])
                print(f"{fmt:6} {n:3} {nt:3} {m2 * 1e3:9.3f} {m5 * 1e3:9.3f} {m2 / m5:6.2f}",
                      flush=True)


def decode(a):
    from fastdl._backends.cython import _quant
    from fastdl.testing import simd_levels
    rng = np.random.default_rng(0)
    w = rng.standard_normal((D, D), dtype=np.float32) * 0.02
    out = np.empty((a.panel, D), np.float32)
    print(f"{'format':6} " + " ".join(f"{lv + ' ns/w':>12}" for lv in simd_levels()))
    for fmt in a.formats.split(","):
        q = quantize(w, **FORMATS[fmt], backend="cython")
        t = {lv: [] for lv in simd_levels()}

        def run():
            for j0 in range(0, D - a.panel + 1, a.panel):
                _quant.decode_rows(q, j0, j0 + a.panel, out, 1)
        for _ in range(a.repeats):
            for lv in t:
                with simd(lv):
                    t[lv].append(burst(run))
        nw = (D // a.panel) * a.panel * D
        print(f"{fmt:6} " + " ".join(f"{min(v) / nw * 1e9:12.3f}" for v in t.values()), flush=True)


if __name__ == "__main__":
    fastdl.set_num_threads(1)
    main()
