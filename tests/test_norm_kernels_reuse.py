"""Stress tests of the Cython normalization kernels: repeated calls give the same bits
and leak no scratch buffer, reference or memory; two Python threads at once (also at
different thread counts); 1 vs 2 threads on small inputs.

Everything here must run in well under a minute on 2 cores.
"""

import gc
import sys
import threading

import numpy as np
import pytest

import fastdl

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl.testing import threads

from _norm_kernels_helpers import DTYPES, F32, F64, assert_bitwise, operands, run_all  # noqa: E402


# ---------------------------------------------------------------- repeated calls, scratch, threads

REPEAT_CASES = [("layer", (300, 77)), ("rms", (300, 77)), ("group", (5, 6, 40)),
                ("batch_train", (200, 4, 9)), ("batch_train", (6, 4, 80)),
                ("batch_eval", (200, 4, 9))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", [pytest.param(n, s, id=f"{n}-{'x'.join(map(str, s))}")
                                        for n, s in REPEAT_CASES])
def test_repeat_same_bits_and_no_scratch_leak(norm, shape, dtype):
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("repeat",))
    first = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    second = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_bitwise(second, first, f"{norm}: second call")
    # dirty every scratch buffer with a larger, nan-filled problem of the same kind,
    # and with a smaller one, then recompute
    big = tuple(s * 2 + 1 for s in shape)
    xb, dyb, wb, bb, rmb, rvb = operands(norm, big, dtype, key=("big",))
    xb[...] = np.nan
    dyb[...] = np.nan
    with np.errstate(all="ignore"):
        run_all(norm, xb, dyb, wb, bb, rmb, rvb, backend="cython")
        small = tuple(max(1, s // 2) for s in shape)
        xs, dys, ws, bs, rms_, rvs = operands(norm, small, dtype, key=("small",))
        if not (norm == "batch_train" and np.prod(small) // small[1] < 2):
            run_all(norm, xs, dys, ws, bs, rms_, rvs, backend="cython")
    third = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_bitwise(third, first, f"{norm}: after other calls dirtied the scratch buffers")


def test_no_reference_leaks():
    """The kernels must not keep references to (or leak references of) their arguments."""
    arrays = {}
    for norm, shape in [("layer", (40, 33)), ("rms", (40, 33)), ("group", (4, 4, 20)),
                        ("batch_train", (30, 4, 9)), ("batch_train", (3, 4, 70)),
                        ("batch_eval", (30, 4, 9)), ("batch_eval", (3, 4, 70))]:
        arrays[(norm, shape)] = operands(norm, shape, F32, key=("leak",))

    def counts():
        return [sys.getrefcount(a) for ops in arrays.values() for a in ops if a is not None]

    def once():
        for (norm, _), (x, dy, w, b, rm, rv) in arrays.items():
            run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    once()
    gc.collect()
    before = counts()
    for _ in range(5):
        once()
    gc.collect()
    assert counts() == before


def test_no_memory_growth():
    import tracemalloc
    x, dy, w, b, _, _ = operands("layer", (256, 300), F32, key=("mem",))
    x3, dy3, w3, b3, rm, rv = operands("batch_eval", (64, 8, 9), F32, key=("mem",))

    def once():
        run_all("layer", x, dy, w, b, None, None, backend="cython")
        run_all("batch_train", x3, dy3, w3, b3, None, None, backend="cython")
        run_all("batch_eval", x3, dy3, w3, b3, rm, rv, backend="cython")
        run_all("group", x3, dy3, w3, b3, None, None, backend="cython")
        run_all("rms", x, dy, w, None, None, None, backend="cython")
    tracemalloc.start()
    try:
        for _ in range(5):
            once()
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, f"traced memory grew by {grown} bytes over 40 rounds"


def test_two_python_threads_at_once():
    """Calls from two Python threads (each with its own scratch buffers, sharing the global
    kernel table) give the single-threaded results, bitwise."""
    cases = [("layer", (300, 129), F32), ("rms", (200, 1025), F64), ("group", (4, 6, 300), F32),
             ("batch_train", (300, 8, 9), F64), ("batch_train", (20, 4, 300), F32),
             ("batch_eval", (300, 8, 9), F32), ("instance", (6, 5, 70), F64),
             ("layer", (2, 70001), F64)]
    data = [operands(n, s, d, key=("pythreads",)) for n, s, d in cases]
    expected = [run_all(n, *ops, backend="cython") for (n, _, _), ops in zip(cases, data)]
    errors = []
    barrier = threading.Barrier(2)

    def worker(order):
        try:
            barrier.wait()
            for _ in range(6):
                for i in order:
                    got = run_all(cases[i][0], *data[i], backend="cython")
                    assert_bitwise(got, expected[i], f"thread: {cases[i][:2]}")
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)
    idx = list(range(len(cases)))
    ts = [threading.Thread(target=worker, args=(idx,)),
          threading.Thread(target=worker, args=(idx[::-1],))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not any(t.is_alive() for t in ts), "a thread hung"
    if errors:
        raise errors[0]


def test_two_python_threads_different_thread_counts():
    """One Python thread calls while the other flips fastdl.set_num_threads: the results
    must not depend on the thread count."""
    cases = [("layer", (500, 257), F32), ("batch_train", (400, 8, 9), F32),
             ("group", (8, 4, 500), F64)]
    data = [operands(n, s, d, key=("nt",)) for n, s, d in cases]
    expected = [run_all(n, *ops, backend="cython") for (n, _, _), ops in zip(cases, data)]
    stop = threading.Event()
    errors = []

    def flipper():
        k = 0
        while not stop.is_set():
            fastdl.set_num_threads(1 + (k % 2))
            k += 1

    def caller():
        try:
            for _ in range(10):
                for (n, _, _), ops, want in zip(cases, data, expected):
                    assert_bitwise(run_all(n, *ops, backend="cython"), want, f"{n}")
        except BaseException as exc:   # noqa: BLE001
            errors.append(exc)
    old = fastdl.get_num_threads()
    t1, t2 = threading.Thread(target=flipper), threading.Thread(target=caller)
    t1.start()
    t2.start()
    t2.join(120)
    stop.set()
    t1.join(10)
    fastdl.set_num_threads(old)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm,shape", [
    ("layer", (33, 1025)), ("rms", (33, 17)), ("group", (5, 4, 1025)), ("instance", (5, 3, 65)),
    ("batch_train", (33, 3, 63)), ("batch_train", (33, 3, 64)), ("batch_eval", (33, 3, 31)),
    ("batch_train", (1100, 2, 5))])
def test_one_vs_two_threads_small(norm, shape, dtype):
    x, dy, w, b, rm, rv = operands(norm, shape, dtype, key=("thr12",))
    with threads(1):
        one = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    with threads(2):
        two = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    with threads(3):
        three = run_all(norm, x, dy, w, b, rm, rv, backend="cython")
    assert_bitwise(two, one, f"{norm} {shape}: 2 threads vs 1")
    assert_bitwise(three, one, f"{norm} {shape}: 3 threads vs 1")
