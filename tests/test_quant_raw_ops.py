"""The Cython quantization ops called directly, as plugins, the registry and users can
(``fastdl.registry.dispatch(op, args, {}, "cython")``, the backend object's ``ops``, the
kernel module's functions): every bad size, dtype, stride, block size or inconsistent
``QuantizedTensor`` is a ValueError / TypeError raised before the kernels run, never a
write past a buffer or a SIGFPE.

Inconsistent tensors are forged by setting the slots of a real one (``object.__setattr__``
gets past the immutability guard) or by a subclass that reports other fields.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastdl import quant, registry
from fastdl.quant import QuantizedTensor

cy = pytest.importorskip("fastdl._backends.cython")
from fastdl._backends.cython import _quant  # noqa: E402

W = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)


def raw_ops():
    """(name, quantize, dequantize, qmatmul) for each way in: the backend object's op
    functions, registry dispatch to "cython", and the kernel module (thread count 1)."""
    ops = cy.backend.ops
    yield "backend", ops["quantize"], ops["dequantize"], ops["qmatmul"]

    def disp(op):
        return lambda *a: registry.dispatch(op, a, {}, "cython")
    yield "dispatch", disp("quantize"), disp("dequantize"), disp("qmatmul")
    yield ("kernel", lambda *a: _quant.quantize(*a, 1), lambda *a: _quant.dequantize(*a, 1),
           lambda *a: _quant.qmatmul(*a, 1))


RAW = list(raw_ops())
ids = [r[0] for r in RAW]


@pytest.mark.parametrize("way", RAW, ids=ids)
@pytest.mark.parametrize("bs", [65, 1000, 2 ** 63 - 808, 2 ** 63 - 1, 0, -1, -2 ** 63])
def test_quantize_block_size_outside_d_in_is_rejected(way, bs):
    qz = way[1]
    with pytest.raises(ValueError, match=r"block_size must be in \[1, d_in=64\].*got " + str(bs)):
        qz(W, 4, "absmax", bs, "nearest", False)
    with pytest.raises(ValueError, match="block_size"):
        qz(W, 4, "nf4", bs, "nearest", False)


@pytest.mark.parametrize("way", RAW[:2], ids=ids[:2])
@pytest.mark.parametrize("bs", [2 ** 63, 2 ** 64 + 3, -2 ** 70])
def test_quantize_block_size_beyond_int64_is_value_error(way, bs):
    with pytest.raises(ValueError, match="block_size"):
        way[1](W, 4, "absmax", bs, "nearest", False)


@pytest.mark.parametrize("way", RAW, ids=ids)
def test_quantize_valid_block_sizes_match_numpy(way):
    qz = way[1]
    for bs in (1, 2, 63, 64):
        data, scales = qz(W, 4, "absmax", bs, "nearest", False)
        ref = quant.quantize(W, 4, block_size=max(bs, 2), backend="numpy") if bs > 1 else None
        if ref is not None:
            np.testing.assert_array_equal(data, ref.data)
            np.testing.assert_array_equal(scales, ref.scales)
        assert scales.shape == (8, -(-64 // bs))
    # per tensor: the block size argument is not used
    data, scales = qz(W, 8, "absmax", 64, "floor", True)
    assert scales.shape == (1,)


@pytest.mark.parametrize("way", RAW, ids=ids)
def test_quantize_bad_arrays_and_choices(way):
    qz = way[1]
    bad_type = [W.astype(np.float64), W.astype(np.float16), W.astype(np.int32), W.tolist(),
                W.astype(">f4"), None]
    for w in bad_type:
        with pytest.raises(TypeError, match="w must be a float32"):
            qz(w, 4, "absmax", 32, "nearest", False)
    for w in (np.asfortranarray(W), W[:, ::2], W[::2], W[:, :0], W[:0], W[0], W[None]):
        with pytest.raises(ValueError, match="w must"):
            qz(w, 4, "absmax", 2, "nearest", False)
    for args, exc in [((9, "absmax", 32, "nearest"), ValueError),
                      ((1, "absmax", 32, "nearest"), ValueError),
                      ((4, "nf3", 32, "nearest"), ValueError),
                      ((8, "nf4", 32, "nearest"), ValueError),
                      ((4, "absmax", 32, "up"), ValueError)]:
        with pytest.raises(exc):
            qz(W, *args, False)


@pytest.mark.parametrize("way", RAW[:2], ids=ids[:2])
def test_quantize_bad_scalars_are_type_or_value_errors(way):
    qz = way[1]
    for bits, exc in [(2 ** 70, ValueError), (-2 ** 70, ValueError), (4.0, TypeError),
                      (True, TypeError), ("4", TypeError)]:
        with pytest.raises(exc, match="bits"):
            qz(W, bits, "absmax", 32, "nearest", False)
    for bs in (32.0, "32", None, True):
        with pytest.raises(TypeError, match="block_size"):
            qz(W, 4, "absmax", bs, "nearest", False)
    with pytest.raises(TypeError, match="per_tensor"):
        qz(W, 4, "absmax", 32, "nearest", 1)


# ---------------------------------------------------------------- forged tensors

def forge(q, **fields):
    """A QuantizedTensor with q's slots, some replaced, built without the constructor."""
    f = object.__new__(QuantizedTensor)
    for name in QuantizedTensor.__slots__:
        object.__setattr__(f, name, fields.get(name, getattr(q, name)))
    return f


Q4 = quant.quantize(W, 4, block_size=32, backend="numpy")
Q8 = quant.quantize(W, 8, block_size=16, backend="numpy")
QDQ = quant.quantize(np.tile(W, (1, 40)), 4, scheme="nf4", block_size=32, double_quant=True,
                     backend="numpy")                         # 320 columns: 2 scale groups
QT = quant.quantize(W, 4, block_size=None, backend="numpy")


def ro(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


FORGED = {
    "data-rows-short": forge(Q4, data=ro(Q4.data[:4])),
    "data-row-bytes-short": forge(Q4, data=ro(Q4.data[:, :31])),
    "data-int8-for-4-bits": forge(Q4, data=ro(Q4.data.view(np.int8))),
    "data-int16": forge(Q4, data=ro(Q4.data.view(np.int16))),
    "data-strided": forge(Q4, data=np.concatenate([Q4.data, Q4.data], 1)[:, ::2]),
    "data-fortran": forge(Q4, data=np.asfortranarray(Q4.data)),
    "data-list": forge(Q4, data=Q4.data.tolist()),
    "data-none": forge(Q4, data=None),
    "bits-8-on-nibbles": forge(Q4, bits=8),
    "bits-4-on-int8": forge(Q8, bits=4),
    "bits-9": forge(Q8, bits=9),
    "bits-huge": forge(Q8, bits=2 ** 70),
    "bits-float": forge(Q8, bits=8.0),
    "scheme-nf4-8-bits": forge(Q8, scheme="nf4"),
    "scheme-bogus": forge(Q4, scheme="int4"),
    "shape-d-in-huge": forge(Q4, shape=(2 ** 40, 8)),
    "shape-d-out-huge": forge(Q4, shape=(64, 2 ** 40)),
    "shape-beyond-int64": forge(Q4, shape=(2 ** 64, 8)),
    "shape-zero": forge(Q4, shape=(0, 8)),
    "shape-negative": forge(Q4, shape=(64, -8)),
    "shape-3-d": forge(Q4, shape=(64, 8, 1)),
    "shape-list": forge(Q4, shape=[64, 8]),
    "shape-transposed": forge(Q4, shape=(8, 64)),
    "block-smaller-than-scales": forge(Q4, block_size=2),
    "block-zero": forge(Q4, block_size=0),
    "block-negative": forge(Q4, block_size=-32),
    "block-sigfpe": forge(Q4, block_size=-2 ** 63),
    "block-float": forge(Q4, block_size=32.0),
    "block-none-with-block-scales": forge(Q4, block_size=None),
    "scales-short": forge(Q4, scales=ro(Q4.scales[:, :1])),
    "scales-float64": forge(Q4, scales=ro(Q4.scales.astype(np.float64))),
    "scales-float16": forge(Q4, scales=ro(Q4.scales.astype(np.float16))),
    "scales-strided": forge(Q4, scales=np.repeat(Q4.scales, 2, axis=1)[:, ::2]),
    "scales-none": forge(Q4, scales=None),
    "tensor-scale-empty": forge(QT, scales=ro(np.zeros(0, np.float32))),
    "dq-flag-without-codes": forge(Q4, double_quant=True),
    "dq-flag-int": forge(Q4, double_quant=1),
    "dq-codes-short": forge(QDQ, scale_codes=ro(QDQ.scale_codes[:-1])),
    "dq-codes-uint16": forge(QDQ, scale_codes=ro(QDQ.scale_codes.astype(np.int16))),
    "dq-groups-short": forge(QDQ, scale_scales=ro(QDQ.scale_scales[:1])),
    "dq-groups-float64": forge(QDQ, scale_scales=ro(QDQ.scale_scales.astype(np.float64))),
    "dq-mean-vector": forge(QDQ, scale_mean=ro(np.zeros(3, np.float32))),
    "dq-mean-python-float": forge(QDQ, scale_mean=0.5),
    "dq-per-tensor": forge(QDQ, block_size=None),
}


class LyingTensor(QuantizedTensor):
    """A subclass whose data property reports a much smaller array than shape says."""
    __slots__ = ()

    @property
    def data(self):
        return ro(np.zeros((1, 1), np.uint8))


def test_lying_subclass_is_rejected():
    lie = object.__new__(LyingTensor)
    for name in QuantizedTensor.__slots__:
        if name != "data":
            object.__setattr__(lie, name, getattr(Q4, name))
    for _, _, dq, mm in RAW:
        with pytest.raises(ValueError, match="q.data must have shape"):
            dq(lie, np.empty((64, 8), np.float32))
        with pytest.raises(ValueError, match="q.data must have shape"):
            mm(np.ones((3, 64), np.float32), lie, False, np.empty((3, 8), np.float32))


@pytest.mark.parametrize("way", RAW, ids=ids)
@pytest.mark.parametrize("name", list(FORGED))
def test_forged_tensors_are_rejected(way, name):
    q = FORGED[name]
    _, _, dq, mm = way
    d_in, d_out = (QDQ if name.startswith("dq-") and "flag" not in name else Q4).shape
    with pytest.raises((ValueError, TypeError)):
        dq(q, np.empty((d_in, d_out), np.float32))
    for transpose in (False, True):
        k, m = (d_out, d_in) if transpose else (d_in, d_out)
        with pytest.raises((ValueError, TypeError)):
            mm(np.ones((3, k), np.float32), q, transpose, np.empty((3, m), np.float32))
        with pytest.raises((ValueError, TypeError)):
            mm(np.ones((30, k)), q, transpose, np.empty((30, m)))      # the BLAS path


@pytest.mark.parametrize("way", RAW, ids=ids)
def test_forged_but_consistent_tensors_still_work(way):
    # a block size far beyond d_in is one block per column, as the constructor allows
    q = forge(Q4, block_size=2 ** 63 - 808, scales=ro(np.abs(W).max(0)[:, None] / 7))
    _, _, dq, mm = way
    out = dq(q, np.empty((64, 8), np.float32))
    np.testing.assert_array_equal(out, quant.dequantize(q, backend="numpy"))
    y = mm(np.ones((2, 64), np.float32), q, False, np.empty((2, 8), np.float32))
    np.testing.assert_allclose(y, np.ones((2, 64)) @ out, rtol=1e-5)


@pytest.mark.parametrize("way", RAW, ids=ids)
def test_bad_out_and_x(way):
    _, _, dq, mm = way
    for out, exc in [(np.empty((64, 8), np.int32), TypeError), (None, TypeError),
                     (np.empty((64, 8), ">f4"), TypeError), (np.empty((8, 64), np.float32), ValueError),
                     (np.empty((64, 16), np.float32)[:, ::2], ValueError),
                     (ro(np.empty((64, 8), np.float32)), ValueError)]:
        with pytest.raises(exc, match="out"):
            dq(Q4, out)
    good = np.empty((2, 8), np.float32)
    x = np.ones((2, 64), np.float32)
    for bx, exc in [(x.astype(np.float16), TypeError), (x.astype(np.int32), TypeError),
                    (x.tolist(), TypeError), (x.astype(">f4"), TypeError),
                    (np.ones((2, 128), np.float32)[:, ::2], ValueError),
                    (np.ones((0, 64), np.float32), ValueError), (x[0], ValueError),
                    (np.ones((2, 63), np.float32), ValueError)]:
        with pytest.raises(exc, match="x must"):
            mm(bx, Q4, False, good)
    for bo, exc in [(good.astype(np.float64), TypeError), (np.empty((2, 9), np.float32), ValueError),
                    (np.empty((8, 2), np.float32).T, ValueError),
                    (ro(good), ValueError), (x[:, :8], ValueError)]:
        with pytest.raises(exc, match="out"):
            mm(x, Q4, False, bo)


@pytest.mark.parametrize("way", RAW, ids=ids)
def test_out_aliasing_the_tensor_is_rejected(way):
    # a writeable float32 view of the bytes that also hold q.data and q.scales
    buf = np.zeros(4096, np.uint8)
    data = buf[:8 * 32].reshape(8, 32)
    data[...] = Q4.data
    scales = buf[1024:1024 + 64].view(np.float32).reshape(8, 2)
    scales[...] = Q4.scales
    q = forge(Q4, data=data, scales=scales)
    _, _, dq, mm = way
    np.testing.assert_array_equal(dq(q, np.empty((64, 8), np.float32)), quant.dequantize(Q4))
    with pytest.raises(ValueError, match="overlap"):
        dq(q, buf[:2048].view(np.float32).reshape(64, 8))
    with pytest.raises(ValueError, match="overlap"):
        mm(np.ones((2, 64), np.float32), q, False, buf[1024:1088].view(np.float32).reshape(2, 8))


def test_bad_calls_in_a_subprocess_exit_normally():
    # the crash cases (a heap write past the scales, SIGFPE) would kill the test run;
    # here a crash shows as a signal exit status
    script = textwrap.dedent("""
        import numpy as np
        from fastdl._backends import cython as cy
        from fastdl._backends.cython import _quant
        w = np.ones((64, 8), np.float32)
        for bs in (65, 4096, 2 ** 63 - 808, 2 ** 62 + 1, 0, -1):
            for call in (lambda: cy.quantize(w, 4, "absmax", bs, "nearest", False),
                         lambda: _quant.quantize(w, 4, "absmax", bs, "nearest", False, 2),
                         lambda: _quant.quantize(w, 8, "nf4", bs, "nearest", False, 2)):
                try:
                    call()
                except ValueError:
                    print("ValueError")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.split() == ["ValueError"] * 18


@pytest.mark.parametrize("bs", [65, 2 ** 63 - 808, 0, -1])
def test_numpy_reference_op_has_the_same_block_size_contract(bs):
    from fastdl._backends import numpy as numpy_backend
    np_ops = numpy_backend.backend.ops
    for per_tensor in (False, True):      # the public API passes d_in per tensor
        with pytest.raises(ValueError, match=r"block_size must be in \[1, d_in=64\]"):
            np_ops["quantize"](W, 4, "absmax", bs, "nearest", per_tensor)
