"""Thread counts: bounds, team sizes, fork safety, results independent of threads."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastdl
from fastdl import decode, quant
from fastdl._threads import MAX_THREADS

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _cpu  # noqa: E402


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastdl.__file__)))


def _env(**env):
    """The environment of a child interpreter that imports this fastdl."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=ROOT + (os.pathsep + path if path else ""), **env)


def _run(code, timeout=60, **env):
    """Run ``code`` (a string, or a script path) in a new interpreter of its own
    session; on timeout the whole session (a hung pool too) is killed and the
    test fails."""
    args = [code] if code.endswith(".py") else ["-c", textwrap.dedent(code)]
    p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env(**env),
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"timed out after {timeout} s (a hang): {code[:200]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


@pytest.fixture
def restore_threads():
    old = fastdl.get_num_threads()
    yield
    fastdl.set_num_threads(old)


@pytest.fixture
def every_region_parallel():
    """Parallel paths even for small inputs and on a busy machine."""
    g, a = _cpu.set_grain(0), _cpu.set_load_adaptive(False)
    yield
    _cpu.set_grain(g)
    _cpu.set_load_adaptive(a)


# ------------------------------------------------------------------ bounds

@pytest.mark.parametrize("n", [MAX_THREADS + 1, 100000, 2 ** 31, 2 ** 63])
def test_absurd_counts_rejected(n, restore_threads):
    fastdl.set_num_threads(2)
    with pytest.raises(ValueError, match=f"n must be <= {MAX_THREADS}.*got {n}"):
        fastdl.set_num_threads(n)
    assert fastdl.get_num_threads() == 2          # the rejected value left no trace
    fastdl.layer_norm(np.ones((512, 256), np.float32), 256)


def test_count_types(restore_threads):
    fastdl.set_num_threads(np.int64(3))
    assert fastdl.get_num_threads() == 3 and type(fastdl.get_num_threads()) is int
    fastdl.set_num_threads(MAX_THREADS)
    for bad in (True, 2.0, "2", None):
        with pytest.raises(TypeError, match="n must be an int"):
            fastdl.set_num_threads(bad)
    assert MAX_THREADS == max(64, 4 * os.cpu_count())


@pytest.mark.parametrize("raw", ["100000", str(2 ** 31), "0", "-3"])
def test_env_count_rejected(raw):
    r = _run("import fastdl, numpy as np; fastdl.layer_norm(np.ones((512, 256), np.float32), 256)",
             FASTDL_NUM_THREADS=raw)
    assert r.returncode == 1, r.stderr        # an exception, not a crash
    assert "ValueError: FASTDL_NUM_THREADS must be" in r.stderr and raw in r.stderr


def test_env_count_accepted():
    r = _run("import fastdl; print(fastdl.get_num_threads())", FASTDL_NUM_THREADS=str(MAX_THREADS))
    assert r.stdout.strip() == str(MAX_THREADS)


def test_kernels_called_directly_with_huge_counts():
    """Backend ops are an extension point: a raw count reaches the kernels."""
    r = _run("""
        import numpy as np
        from fastdl._backends.cython import _cpu, _norm, _decode, _norm_stats
        x = np.ones((512, 256), np.float32)
        _norm.layer_norm_fwd(x, None, None, 1e-5, None, 100000)
        _decode.topk(x, 3, 2 ** 31 - 1)
        _norm_stats.norm_stats(x.reshape(8, 64, 256), "layer", None, 0, 100000)
        assert _cpu.team_size(2 ** 31 - 1, 1 << 40, 1 << 40) <= _cpu.TEAM_MAX
        print("ok")
        """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ------------------------------------------------------------------ team sizes

def test_team_size_rules():
    adaptive = _cpu.set_load_adaptive(False)
    try:
        assert _cpu.team_size(8, 1 << 30, 3) == 3              # never more than the units
        assert _cpu.team_size(8, 1 << 30, 1) == 1
        assert _cpu.team_size(8, 1000, 100) == 1               # below the grain
        assert _cpu.team_size(8, 1 << 20, 100) == 8
        assert _cpu.team_size(1, 1 << 30, 100) == 1
        assert _cpu.team_size(0, 1 << 30, 100) == 1
        assert _cpu.blas_team(4) == 4
        _cpu.set_load_adaptive(True)
        free = _cpu.free_cpus()
        assert 1 <= free <= os.cpu_count()
        assert _cpu.team_size(64, 1 << 20, 100) <= free         # the load bounds the team
        assert _cpu.blas_team(64) <= free
    finally:
        _cpu.set_load_adaptive(adaptive)


def test_free_cpus_from_run_queue_wait():
    """free CPUs from the share of its runnable time the caller waited for a CPU"""
    ms = 1_000_000
    f = _cpu._free_from
    assert f(2, ms, 0) == 2                     # idle: never waited
    assert f(2, ms, ms // 50) == 2              # a little scheduling noise
    assert f(2, ms, ms) == 1                    # one busy process per CPU: waited half the time
    assert f(2, ms, 3 * ms) == 1                # more busy processes than CPUs
    assert f(16, 3 * ms, ms // 3) == 13         # about 3 of 16 CPUs busy
    assert f(16, ms, ms) == 1
    assert f(4, 0, 0) == 4                      # no information: no reduction
    assert f(1, ms, ms) == 1 and f(0, ms, 0) == 1


def test_team_settings_validate():
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        _cpu.set_grain(-1)
    old = _cpu.set_grain(123)
    assert _cpu.set_grain(old) == 123


def test_idle_machine_keeps_every_thread():
    """On an idle machine (this test's own process only) the load rule leaves the
    team at the configured count: our own spinning workers are not load."""
    if os.cpu_count() < 2 or not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("needs 2 or more CPUs and Linux scheduler statistics")

    def waited():
        cpu, delay = map(int, open("/proc/thread-self/schedstat").read().split()[:2])
        return cpu, delay
    x = np.random.default_rng(0).standard_normal((1, 10**6)).astype(np.float32)
    adaptive = _cpu.set_load_adaptive(True)
    try:
        import time
        seen = []
        c0, d0 = waited()
        for _ in range(60):
            decode.topk(x, 10)                  # leaves an OpenMP worker spinning
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.002:
                pass
            seen.append(_cpu.team_size(2, 1 << 20, 1000))
        c1, d1 = waited()
        if (d1 - d0) > 0.1 * ((c1 - c0) + (d1 - d0)):
            pytest.skip("other processes kept this test waiting for a CPU")
        assert sorted(seen)[len(seen) // 2] == 2, seen
    finally:
        _cpu.set_load_adaptive(adaptive)


def test_back_to_back_blas_calls_keep_every_thread_on_an_idle_machine():
    """OpenBLAS's workers spin ~0.1 s after a call: they are ours, not load, even after
    a call that got fewer threads (counting only the last team's workers gave 1 thread
    to 61% of back-to-back calls on an idle 2-CPU machine)."""
    if os.cpu_count() < 2 or not os.path.exists("/proc/thread-self/schedstat"):
        pytest.skip("needs 2 or more CPUs and Linux scheduler statistics")
    from fastdl import ops
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(s, dtype=np.float32) for s in ((128, 512), (512, 512)))
    a, b = np.zeros((512, 0), np.float32), np.zeros((512, 0), np.float32)
    adaptive = _cpu.set_load_adaptive(True)
    try:
        c0, d0 = map(int, open("/proc/thread-self/schedstat").read().split()[:2])
        seen = []
        for _ in range(200):
            ops.lora_fwd(x, w, a, b, None, None, 0.0, backend="cython")   # one sgemm
            seen.append(_cpu.blas_team(2))
        c1, d1 = map(int, open("/proc/thread-self/schedstat").read().split()[:2])
        if (d1 - d0) > 0.1 * ((c1 - c0) + (d1 - d0)):
            pytest.skip("other processes kept this test waiting for a CPU")
        assert seen.count(2) >= 0.8 * len(seen), seen
    finally:
        _cpu.set_load_adaptive(adaptive)


def test_busy_machine_shrinks_small_regions():
    """With one busy process per CPU, a small region runs on one thread while an
    idle count would give it every thread."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(os.cpu_count())]
    try:
        import time
        time.sleep(0.5)                         # the busy interpreters start up
        seen = []
        for _ in range(50):
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.003:     # run, so the wait can be measured
                pass
            seen.append(_cpu.team_size(os.cpu_count(), 1 << 20, 1000))
        assert min(seen) == 1 and sorted(seen)[len(seen) // 2] == 1
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def test_blas_thread_count_restored():
    if not _cpu.blas_threads(1):
        pytest.skip("this BLAS cannot be told a thread count")
    old = _cpu.blas_threads(2)
    assert old == 1
    w = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    q = quant.quantize(w, 8)
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    cy._quant.qmatmul(x, q, False, np.empty((64, 128), np.float32), 1, "blas")
    assert _cpu.blas_threads(old) == 2      # the call set its own count, then restored ours


# ------------------------------------------------------------------ results vs threads

def _all_ops():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 300)).astype(np.float32)
    x3 = rng.standard_normal((6, 8, 50)).astype(np.float32)
    w = rng.standard_normal((192, 40)).astype(np.float32)
    q4 = quant.quantize(w, 4, block_size=64)
    xq = rng.standard_normal((30, 192)).astype(np.float32)
    out = [fastdl.layer_norm(x, 300), fastdl.rms_norm(x, 300), fastdl.group_norm(x3, 4),
           fastdl.batch_norm(x3, None, None, training=True),
           *fastdl.norm_stats(x3, "batch"), *fastdl.norm_stats(x3, "layer"),
           *fastdl.layer_norm_backward(x, x, 300, np.ones(300, np.float32)),
           *decode.topk(x, 5), decode.log_softmax(x), *decode.topk(x[:1], 7),
           *decode.beam_topk(x[:4], np.zeros(4, np.float32), 6),
           q4.data, q4.scales, quant.qmatmul(xq, q4), quant.qmatmul(xq[:1], q4),
           quant.dequantize(q4)]
    return [np.asarray(a) for a in out]


def test_bitwise_same_for_any_team(every_region_parallel, restore_threads):
    fastdl.set_num_threads(1)
    ref = _all_ops()
    for n in (2, 3, 5, 16):
        fastdl.set_num_threads(n)
        for a, b in zip(ref, _all_ops()):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


# ------------------------------------------------------------------ fork

FORK_SCRIPT = """
import multiprocessing as mp, os, sys
import numpy as np
import fastdl
from fastdl import decode, quant
from fastdl._backends.cython import _cpu

_cpu.set_load_adaptive(False)          # the parent really runs multi-threaded
fastdl.set_num_threads(2)
rng = np.random.default_rng(3)
X = rng.standard_normal((512, 4096)).astype(np.float32)
N3 = rng.standard_normal((16, 64, 256)).astype(np.float32)
V = rng.standard_normal((2, 200000)).astype(np.float32)
W = rng.standard_normal((1024, 512)).astype(np.float32)
Q = quant.quantize(W, 4, block_size=64)
XQ = rng.standard_normal((64, 1024)).astype(np.float32)

OPS = {
    "layer_norm": lambda: fastdl.layer_norm(X, 4096),
    "norm_stats": lambda: np.stack(fastdl.norm_stats(N3, "batch")),
    "topk": lambda: decode.topk(V, 10)[1],
    "log_softmax": lambda: decode.log_softmax(V),
    "quantize": lambda: quant.quantize(W, 4, block_size=64).data,
    "qmatmul_1": lambda: quant.qmatmul(XQ[:1], Q),
    "qmatmul_64": lambda: quant.qmatmul(XQ, Q),
}

def threads_now():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("Threads:"))

def child(name):
    r = OPS[name]()
    return name, r, threads_now()

def grandchild():
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = all(np.array_equal(OPS[n](), REF[n]) for n in OPS)
        os.write(wr, b"1" if ok else b"0")
        os._exit(0)
    os.close(wr)
    got = os.read(rd, 1)
    os.waitpid(pid, 0)
    return got == b"1", threads_now()

if __name__ == "__main__":
    REF = {n: f() for n, f in OPS.items()}
    with mp.get_context("fork").Pool(2) as pool:
        res = pool.map(child, list(OPS))
        nested_ok, nested_threads = pool.apply(grandchild)
    bad = [n for n, r, _ in res if not np.array_equal(r, REF[n])]
    assert not bad, bad
    assert nested_ok
    if sys.platform.startswith("linux") and _cpu.fork_facts()[0]:
        # a fresh OpenMP pool in the children: they run at full thread count
        assert max(t for _, _, t in res) >= 2, [t for _, _, t in res]
    after = {n: f() for n, f in OPS.items()}        # the parent keeps working
    assert all(np.array_equal(after[n], REF[n]) for n in OPS)
    print("fork ok")
"""


def test_fork_children_work_after_parent_ran_threads(tmp_path):
    script = tmp_path / "fork_pool.py"
    script.write_text(FORK_SCRIPT)
    r = _run(str(script))
    assert r.returncode == 0 and "fork ok" in r.stdout, r.stderr[-3000:]


def test_os_fork_child_multithreaded():
    r = _run("""
        import os, numpy as np, fastdl
        from fastdl._backends.cython import _cpu
        _cpu.set_load_adaptive(False)
        fastdl.set_num_threads(2)
        x = np.ones((512, 4096), np.float32)
        ref = fastdl.layer_norm(x, 4096)
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(fastdl.layer_norm(x, 4096), ref) and not _cpu.fork_facts()[1]
            os._exit(0 if ok else 3)
        _, st = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(st) == 0
        assert np.array_equal(fastdl.layer_norm(x, 4096), ref)
        print("ok")
        """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


@pytest.mark.parametrize("value, adaptive, warns", [("0", False, False), ("1", True, False),
                                                     ("yes", True, True)])
def test_adaptive_threads_env(value, adaptive, warns):
    """FASTDL_ADAPTIVE_THREADS turns load adaptation off (0) or on (1); other values warn."""
    code = ("import warnings, fastdl\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    from fastdl._backends.cython import _cpu\n"
            "on = _cpu.set_load_adaptive(True)\n"
            "print(on, any('FASTDL_ADAPTIVE_THREADS' in str(x.message) for x in w))\n")
    env = dict(os.environ, FASTDL_ADAPTIVE_THREADS=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [str(adaptive), str(warns)]
