"""Tests of the int8-activation quantized matmul (fastdl/_backends/cython/_qint8.pyx,
src/qi8k*.{c,h}) against its NumPy reference (fastdl/_backends/numpy/quant_int8.py).

* the activation quantizer: bit-identical q and d to the reference (ties, zero and
  tiny blocks, odd d_in), llama.cpp's Q8_0 rule;
* every tier (scalar, AVX2, AVX-VNNI, AVX-512 VNNI where this CPU runs them) and both
  paths (direct small-n, strips) bitwise equal to the scalar twin; 1, 2, 3 threads
  bitwise equal; a pinned SIMD level removes the tiers above it;
* within float32 rounding of the float64 reference, and within the documented error
  bound of x @ dequantize(q) in float64 (hypothesis over shapes, bits 2..8, block
  32/64/128/per tensor, double quantization, n 1..600);
* bad input: clear TypeError / ValueError (dtypes, shapes, NF4, block sizes, non-finite
  x, overlapping out, unknown path / tier).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fastdl import quant
from fastdl._backends.numpy import quant_int8 as ref

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _qint8  # noqa: E402
from fastdl.testing import bitwise_equal as same, fixed_teams, rng_for, simd, simd_levels  # noqa: E402


def _q(bits, bs, dq, d_in, d_out, seed=0):
    w = rng_for("w", bits, bs, dq, d_in, d_out, seed).standard_normal((d_in, d_out))
    return quant.quantize(w.astype(np.float32), bits=bits, block_size=bs, double_quant=dq)


def _x(n, d_in, seed=0):
    return rng_for("x", n, d_in, seed).standard_normal((n, d_in)).astype(np.float32)


def _run(x, q, nthreads=1, path=None, tier=None, tiles=None):
    out = np.full((x.shape[0], q.shape[1]), np.nan, np.float32)
    old = _qint8.set_int8_tier(tier)
    try:
        _qint8.int8_qmatmul(x, q, out, nthreads, path, tiles=tiles)
    finally:
        _qint8.set_int8_tier(old)
    return out


# --------------------------------------------------------------- the quantizer

@pytest.mark.parametrize("d_in", [1, 31, 32, 33, 64, 100, 4096])
def test_quantizer_matches_reference(d_in):
    x = _x(5, d_in) * np.float32(3)
    x[0, : min(d_in, 32)] = 0                          # an all-zero block
    x[1, : min(d_in, 32)] *= np.float32(2.0 ** -110)   # a block flushed to zero
    if d_in >= 4:                                      # exact .5 quotients: 127 * k / 254
        x[2, :4] = np.array([127, 0.5, -1.5, 2.5], np.float32)[: 4]
    qx, d = ref.quantize_rows_q8(x)
    for tier in _qint8.int8_levels():
        # the strip path reads q, d from the quantizer; a weight of units 1 in row 0
        # exposes both: y = sum_s d_s * sum(q) (checked against the reference)
        got = _run(x, _ones(d_in), tier=tier)
        terms = qx.astype(np.float64).reshape(5, -1, 32).sum(axis=2) * d
        tol = (terms.shape[1] + 2) * 2.0 ** -23 * np.abs(terms).sum(axis=1)
        assert np.all(np.abs(got[:, 0] - terms.sum(axis=1)) <= tol)
    assert np.all(qx[0, :32] == 0) and np.all(d[:, 0][:2] == 0)
    assert np.abs(qx).max() <= 127
    if d_in >= 4:
        # 127 -> 127, 0.5 / d = 127 * 0.5 / 127 = 0.5 -> 1 (half away from zero), -1.5 -> -2
        assert list(qx[2, :4]) == [127, 1, -2, 3]


def _ones(d_in):
    """A weight with every unit 1 and scale 1 (bits 8, per tensor): y[:, j] = sum(x_hat)."""
    data = np.ones((2, d_in), np.int8)
    return quant.QuantizedTensor((d_in, 2), 8, "absmax", None, "nearest", data,
                                 np.ones(1, np.float32))


def test_quantizer_is_q8_0():
    # llama.cpp's quantize_row_q8_0_ref: d = amax / 127, id = 1 / d, q = roundf(x * id)
    x = _x(1, 64)
    qx, d = ref.quantize_rows_q8(x)
    for s in range(2):
        b = x[0, 32 * s: 32 * s + 32]
        ds = np.float32(np.abs(b).max()) / np.float32(127)
        ids = np.float32(1) / ds
        want = [int(np.copysign(np.floor(abs(float(v)) + 0.5), v)) for v in b * ids]
        assert d[0, s] == ds and list(qx[0, 32 * s: 32 * s + 32]) == want


# --------------------------------------------------------------- tiers, paths, threads

CASES = [(4, 64, False, 256, 40), (8, 64, False, 256, 40), (2, 32, False, 96, 9),
         (3, None, False, 100, 11), (4, 32, True, 200, 17), (5, 128, False, 300, 13),
         (6, 96, True, 192, 8), (7, 4096, False, 70, 5), (8, None, False, 33, 3),
         (4, 128, True, 1000, 21), (6, 96, False, 1100, 9)]  # 35 blocks of 3: chunk edges mid-block


@pytest.mark.parametrize("bits,bs,dq,d_in,d_out", CASES)
@pytest.mark.parametrize("n", [1, 3, 8, 17, 40])
def test_tiers_and_paths_bitwise(bits, bs, dq, d_in, d_out, n):
    q, x = _q(bits, bs, dq, d_in, d_out), _x(n, d_in)
    base = _run(x, q, path="strip", tier="scalar")
    assert not np.isnan(base).any()
    tiles = _qint8.int8_tiles(q)
    for tier in _qint8.int8_levels():
        for path in ("gemv", "tiles", "amx", "strip", None):
            try:
                got = _run(x, q, path=path, tier=tier, tiles=tiles)
            except ValueError as e:               # a tier without the direct kernels
                assert path in ("gemv", "tiles", "amx") and "path" in str(e), e
                assert tier != "amx" and (tier != "avx512vnni" or path == "amx")
                continue
            assert same(got, base), (tier, path)


@pytest.mark.parametrize("n", [1, 6, 13, 35])      # the small-n kernel, AMX tile products
def test_tiles_threads_and_arguments(n):
    q, x = _q(4, 64, True, 320, 70), _x(n, 320)
    tiles = _qint8.int8_tiles(q, 2)
    assert tiles[0].shape == (5, 10 * 256) and tiles[1].shape == (5, 5 * 16)
    assert same(_qint8.int8_tiles(q, 1)[0], tiles[0]) and same(_qint8.int8_tiles(q, 1)[1], tiles[1])
    with fixed_teams():
        outs = [_run(x, q, nthreads=t, tiles=tiles) for t in (1, 2, 3)]
    assert same(outs[0], outs[1]) and same(outs[0], outs[2])
    assert same(outs[0], _run(x, q, path="strip", tier="scalar"))
    out = np.empty((n, 70), np.float32)
    with pytest.raises(TypeError, match="tiles must be"):
        _qint8.int8_qmatmul(x, q, out, 1, tiles=tiles[0])
    with pytest.raises(ValueError, match=r"tiles\[0\]"):
        _qint8.int8_qmatmul(x, q, out, 1, tiles=(tiles[0][:, :-1].copy(), tiles[1]))
    with pytest.raises(TypeError, match=r"tiles\[1\]"):
        _qint8.int8_qmatmul(x, q, out, 1, tiles=(tiles[0], tiles[1].astype(np.float64)))
    with pytest.raises(ValueError, match="path='tiles' needs"):
        _qint8.int8_qmatmul(x, q, out, 1, "tiles")


def test_int8_product_keeps_its_tiles():
    """The public path builds the reordered weights once (where the kernel runs) and keeps
    them with the tensor."""
    q, x = _q(4, 64, False, 256, 48), _x(1, 256)
    y = quant.qmatmul(x, q, activations="int8", backend="cython")
    if not _qint8.tiles_run(1):
        assert "int8_tiles" not in q._derived
        return
    kept = q._derived["int8_tiles"]
    assert not kept[0].flags.writeable and not kept[1].flags.writeable
    assert same(quant.qmatmul(x, q, activations="int8", backend="cython"), y)
    assert q._derived["int8_tiles"] is kept
    assert same(y, _run(x, q, path="strip", tier="scalar"))


def test_tier_list_and_pinning():
    levels = _qint8.int8_levels()
    assert levels[0] == "scalar" and levels == [t for t in _qint8.TIERS if t in levels]
    with simd("scalar"):
        assert _qint8.int8_levels() == ["scalar"]
        assert _qint8.active_int8_tier() == "scalar"
    if "avx2" in simd_levels():
        with simd("avx2"):
            assert "avx512vnni" not in _qint8.int8_levels()
            assert _qint8.active_int8_tier() in ("avx2", "avxvnni")
    old = _qint8.set_int8_tier("scalar")
    try:
        assert _qint8.active_int8_tier() == "scalar"
    finally:
        _qint8.set_int8_tier(old)
    feats = _qint8.cpu_features()
    assert feats["avx512vnni"] == ("avx512vnni" in levels)
    assert feats["avxvnni"] == ("avxvnni" in levels)


@pytest.mark.parametrize("n", [1, 5, 64, 300])
@pytest.mark.parametrize("bits", [4, 8])
def test_thread_counts_bitwise(n, bits):
    q, x = _q(bits, 64, bits == 4, 256, 300), _x(n, 256)
    with fixed_teams():
        outs = [_run(x, q, nthreads=t) for t in (1, 2, 3)]
    assert same(outs[0], outs[1]) and same(outs[0], outs[2])


def test_strip_width_does_not_change_results():
    q, x = _q(4, 64, False, 128, 200), _x(40, 128)
    base = _run(x, q, path="strip")
    old = _qint8.set_params(strip=8)
    try:
        assert same(_run(x, q, path="strip"), base)
    finally:
        _qint8.set_params(**old)


# --------------------------------------------------------------- accuracy

def _check_accuracy(x, q, nthreads=1):
    got = _run(x, q, nthreads).astype(np.float64)
    want = ref.qmatmul_int8(x, q)
    act, rnd = ref.error_bound(x, q)
    exact = x.astype(np.float64) @ q.dequantize().astype(np.float64)
    assert np.all(np.abs(got - want) <= rnd), np.max(np.abs(got - want) - rnd)
    assert np.all(np.abs(got - exact) <= act + rnd), np.max(np.abs(got - exact) - act - rnd)
    # the reference itself is inside the activation term alone (up to float64 sums)
    assert np.all(np.abs(want - exact) <= act * (1 + 1e-9) + 1e-300)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.integers(2, 8), bs=st.sampled_from([32, 64, 128, None]), dq=st.booleans(),
       d_in=st.integers(1, 300), d_out=st.integers(1, 40),
       n=st.sampled_from([1, 2, 7, 8, 9, 16, 33, 100, 600]), scale=st.sampled_from([1e-3, 1.0, 50.0]),
       seed=st.integers(0, 3))
def test_error_bound_hypothesis(bits, bs, dq, d_in, d_out, n, scale, seed):
    dq = dq and bs is not None
    q = _q(bits, bs, dq, d_in, d_out, seed)
    x = _x(n, d_in, seed) * np.float32(scale)
    _check_accuracy(x, q, nthreads=2)


def test_error_bound_is_not_loose():
    # the activation term is within a small factor of the worst error seen on Gaussian data
    q, x = _q(8, 64, False, 512, 64), _x(50, 512)
    act, rnd = ref.error_bound(x, q)
    err = np.abs(_run(x, q).astype(np.float64) - x.astype(np.float64) @ q.dequantize().astype(np.float64))
    assert err.max() > 0.02 * act.max()
    assert rnd.max() < 1e-3 * act.max()


def test_error_against_float64_of_the_weights():
    # relative RMS error of the int8 path: the activation rounding adds ~ d/sqrt(12) per value
    q, x = _q(8, 64, False, 1024, 64), _x(32, 1024)
    exact = x.astype(np.float64) @ q.dequantize().astype(np.float64)
    err = _run(x, q).astype(np.float64) - exact
    rel = np.sqrt((err ** 2).mean() / (exact ** 2).mean())
    assert 1e-4 < rel < 1e-2


def test_padded_rows_and_extreme_values():
    q = _q(8, 32, False, 64, 5)
    x = _x(17, 64)
    x[3] = 0
    x[4, :] = np.float32(1e30)
    x[5, ::2] = np.float32(-1e-39)             # subnormal: flushed blocks
    _check_accuracy(x, q)


# --------------------------------------------------------------- bad input

def test_bad_inputs():
    q = _q(4, 64, False, 128, 8)
    x = _x(3, 128)
    out = np.empty((3, 8), np.float32)
    with pytest.raises(TypeError, match="x must be a float32"):
        _qint8.int8_qmatmul(x.astype(np.float64), q, out, 1)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 128\)"):
        _qint8.int8_qmatmul(x[:, :64].copy(), q, out, 1)
    with pytest.raises(ValueError, match="C-contiguous"):
        _qint8.int8_qmatmul(np.asfortranarray(x), q, out, 1)
    with pytest.raises(ValueError, match=r"out must have shape \(3, 8\)"):
        _qint8.int8_qmatmul(x, q, np.empty((3, 9), np.float32), 1)
    with pytest.raises(TypeError, match="out must be a float32"):
        _qint8.int8_qmatmul(x, q, np.empty((3, 8)), 1)
    with pytest.raises(TypeError, match="QuantizedTensor"):
        _qint8.int8_qmatmul(x, np.zeros((128, 8), np.float32), out, 1)
    with pytest.raises(ValueError, match="path must be"):
        _qint8.int8_qmatmul(x, q, out, 1, "fast")
    bad = x.copy()
    bad[1, 70] = np.nan
    with pytest.raises(ValueError, match="x must be finite"):
        _qint8.int8_qmatmul(bad, q, out, 1)
    bad[1, 70] = np.inf
    with pytest.raises(ValueError, match="finite"):
        ref.quantize_rows_q8(bad)
    with pytest.raises(ValueError, match="overlap"):
        _qint8.int8_qmatmul(x, q, x.reshape(-1)[:24].reshape(3, 8), 1)
    with pytest.raises(ValueError, match="int8 tier must be one of"):
        _qint8.set_int8_tier("neon")


def test_nf4_and_block_sizes_rejected():
    x = _x(2, 128)
    out = np.empty((2, 4), np.float32)
    w = rng_for("w nf4").standard_normal((128, 4)).astype(np.float32)
    nf4 = quant.quantize(w, bits=4, scheme="nf4", block_size=64)
    for f in (lambda: _qint8.int8_qmatmul(x, nf4, out, 1), lambda: ref.qmatmul_int8(x, nf4)):
        with pytest.raises(ValueError, match="NF4.*exact path.*compute='bf16'"):
            f()
    for bs in (16, 48, 100):
        q = quant.quantize(w, bits=4, block_size=bs)
        for f in (lambda: _qint8.int8_qmatmul(x, q, out, 1), lambda: ref.qmatmul_int8(x, q)):
            with pytest.raises(ValueError, match=f"block_size a multiple of 32.*block_size={bs}"):
                f()
    # a block of at least d_in is one block per column: allowed
    q = quant.quantize(w[:100], bits=4, block_size=128)
    _check_accuracy(x[:, :100].copy(), q)


def test_input_not_changed():
    q, x = _q(4, 64, False, 128, 8), _x(20, 128)
    x0 = x.copy()
    _run(x, q)
    assert same(x, x0)


def test_amx_tier_in_a_forked_child():
    """The tile state the AMX tier asked the OS for is the process's, and a forked child
    inherits it: its tile products give the parent's bits (and no SIGILL).  In a fresh
    interpreter, so the fork happens in a process whose threads this test knows."""
    import subprocess
    import sys
    import textwrap
    code = textwrap.dedent("""
        import os, numpy as np
        from fastdl import quant
        from fastdl._backends.cython import _qint8
        rng = np.random.default_rng(3)
        q = quant.quantize(rng.standard_normal((256, 40)).astype(np.float32), 4, block_size=64)
        x = rng.standard_normal((20, 256)).astype(np.float32)
        tiles = _qint8.int8_tiles(q)
        def run():
            out = np.empty((20, 40), np.float32)
            return _qint8.int8_qmatmul(x, q, out, 2, tiles=tiles)
        want = run()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if np.array_equal(run(), want) else 3)
        _, st = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(st), _qint8.active_int8_tier())
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("child 0 "), (r.stdout, r.stderr[-3000:])
