"""ndarray subclasses at the public API: backends receive exactly ``numpy.ndarray``.

``np.matrix``, ``np.memmap`` and user subclasses become plain views of the same memory
(their overridden operators cannot change a backend's results); masked arrays are a
TypeError everywhere, since every kernel would read the masked entries as data.
"""
import numpy as np
import pytest

import fastdl
from fastdl import decode, quant, registry
from fastdl._backends import numpy as ref
from fastdl.decode.ops import DECODE_OPS
from fastdl.norm import NORM_OPS
from fastdl.quant import QUANT_OPS
from fastdl.testing import BUILTIN_BACKENDS

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

SPY = "subclass-spy"


class Skewed(np.ndarray):
    """A subclass whose ufuncs and reductions lie: anything computed through it is off by 1,
    and whose views carry a marker attribute."""

    def __array_finalize__(self, obj):
        self.marker = getattr(obj, "marker", "skewed")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(a) if isinstance(a, Skewed) else a for a in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, Skewed) else o
                                  for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        return result + 1 if isinstance(result, np.ndarray) and result.dtype.kind == "f" else result


@pytest.fixture
def spy():
    """A registered backend running the NumPy reference ops that records the type of
    every array argument each op receives."""
    seen = []

    def wrap(op, fn):
        def call(*args, **kwargs):
            for a in list(args) + list(kwargs.values()):
                if isinstance(a, np.ndarray):
                    seen.append((op, type(a)))
            return fn(*args, **kwargs)
        return call

    ops = {op: wrap(op, ref.backend.ops[op]) for op in NORM_OPS + DECODE_OPS + QUANT_OPS}
    registry.register_backend(registry.Backend(SPY, ops))
    try:
        yield seen
    finally:
        registry.unregister_backend(SPY)


rng = np.random.default_rng(0)
X3 = rng.standard_normal((4, 6, 5))
X2 = rng.standard_normal((8, 6))
W6 = rng.standard_normal(6) + 1
B6 = rng.standard_normal(6)
WQ = rng.standard_normal((16, 4)).astype(np.float32)
QT = quant.quantize(WQ, 4, block_size=8)


def calls(wrap, backend):
    """(name, thunk) per public function; ``wrap`` turns each array operand into the
    variant under test (the same values)."""
    w = wrap
    stats = fastdl.layer_norm(X2, 6, return_stats=True)[1]
    return [
        ("norm_stats", lambda: fastdl.norm_stats(w(X3), "batch", backend=backend)),
        ("layer_norm", lambda: fastdl.layer_norm(w(X2), 6, w(W6), w(B6), backend=backend)),
        ("layer_norm_out", lambda: fastdl.layer_norm(X2, 6, out=w(np.zeros_like(X2)),
                                                     backend=backend)),
        ("layer_norm_backward", lambda: fastdl.layer_norm_backward(
            w(X2), w(X2), 6, w(W6), stats=(w(stats.mean), w(stats.rstd)), backend=backend)),
        ("rms_norm", lambda: fastdl.rms_norm(w(X2), 6, w(W6), backend=backend)),
        ("rms_norm_backward", lambda: fastdl.rms_norm_backward(w(X2), w(X2), 6, w(W6),
                                                               backend=backend)),
        ("group_norm", lambda: fastdl.group_norm(w(X3), 2, w(W6), w(B6), backend=backend)),
        ("group_norm_backward", lambda: fastdl.group_norm_backward(w(X3), w(X3), 3, w(W6),
                                                                   backend=backend)),
        ("instance_norm", lambda: fastdl.instance_norm(w(X3), None, None, w(W6),
                                                       backend=backend)),
        ("instance_norm_backward", lambda: fastdl.instance_norm_backward(
            w(X3), w(X3), None, None, w(W6), backend=backend)),
        ("batch_norm_train", lambda: fastdl.batch_norm(
            w(X3), w(np.zeros(6)), w(np.ones(6)), w(W6), w(B6), True, backend=backend)),
        ("batch_norm_eval", lambda: fastdl.batch_norm(w(X3), w(B6), w(W6), backend=backend)),
        ("batch_norm_backward", lambda: fastdl.batch_norm_backward(
            w(X3), w(X3), None, None, w(W6), w(B6), True, backend=backend)),
        ("topk", lambda: decode.topk(w(X2), 3, backend=backend)),
        ("log_softmax", lambda: decode.log_softmax(w(X2), out=w(np.zeros_like(X2)),
                                                   backend=backend)),
        ("beam_topk", lambda: decode.beam_topk(w(X2), w(np.zeros(8)), 4, backend=backend)),
        ("quantize", lambda: quant.quantize(w(WQ), 4, block_size=8, backend=backend)),
        ("dequantize", lambda: quant.dequantize(QT, out=w(np.zeros((16, 4), np.float32)),
                                                backend=backend)),
        ("qmatmul", lambda: quant.qmatmul(w(X2[:, :4].astype(np.float32)), QT,
                                          transpose=True, backend=backend)),
    ]


def plain(result):
    if isinstance(result, quant.QuantizedTensor):
        return plain(quant.dequantize(result))
    if isinstance(result, tuple):
        return tuple(plain(r) for r in result)
    return None if result is None else np.array(result, copy=True)


def same(a, b):
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif a is None:
        assert b is None
    else:
        assert type(a) is np.ndarray
        np.testing.assert_array_equal(a, b)


NAMES = [name for name, _ in calls(lambda a: a, None)]


def skewed(a):
    return np.array(a, copy=True).view(Skewed)


def matrix_or_skewed(a):
    return np.matrix(a) if np.ndim(a) == 2 else skewed(a)


@pytest.mark.parametrize("wrap", [skewed, matrix_or_skewed], ids=["Skewed", "matrix"])
@pytest.mark.parametrize("name", NAMES)
def test_spy_backend_receives_plain_ndarrays(name, wrap, spy):
    want = plain(dict(calls(lambda a: np.array(a, copy=True), SPY))[name]())
    spy.clear()
    got = plain(dict(calls(wrap, SPY))[name]())
    assert spy, "the op did not reach the backend"
    assert {t for _, t in spy} == {np.ndarray}, spy
    same(got, want)


@pytest.mark.parametrize("name", NAMES)
def test_subclasses_give_the_plain_results_on_every_backend(name, backend):
    want = plain(dict(calls(lambda a: np.array(a, copy=True), backend))[name]())
    for wrap in (skewed, matrix_or_skewed):
        same(plain(dict(calls(wrap, backend))[name]()), want)


@pytest.mark.parametrize("name", NAMES)
def test_masked_arrays_are_refused(name, backend):
    def masked(a):
        a = np.array(a, copy=True)
        mask = np.zeros(a.shape, bool)
        mask.flat[0] = True
        return np.ma.array(a, mask=mask)

    with pytest.raises(TypeError, match=r"must not be a numpy masked array: its mask would "
                                        r"be ignored; pass \w+\.filled\(value\)"):
        dict(calls(masked, backend))[name]()


def test_masked_array_was_silently_unmasked():
    """The original report: a masked entry counted as data, differently per backend."""
    x = np.ma.array(np.arange(8.0).reshape(2, 4), mask=[[0, 0, 0, 1], [0, 0, 0, 0]])
    for backend in BUILTIN_BACKENDS:
        with pytest.raises(TypeError, match="x must not be a numpy masked array"):
            fastdl.norm_stats(x, "layer", backend=backend)
    np.testing.assert_array_equal(fastdl.norm_stats(x.filled(0.0), "layer")[0],
                                  [0.75, 5.5])


def test_out_subclass_receives_the_result_without_copy(tmp_path):
    """np.memmap (an ndarray subclass) as out=: written in place through a plain view."""
    out = np.memmap(tmp_path / "out.bin", dtype=np.float64, mode="w+", shape=X2.shape)
    y = fastdl.layer_norm(X2, 6, out=out)
    assert type(y) is np.ndarray and np.shares_memory(y, out)
    np.testing.assert_array_equal(out, fastdl.layer_norm(X2, 6))


def test_plain_input_is_not_copied():
    from fastdl._validate import as_float_array
    m = np.matrix(X2)
    arr = as_float_array(m)
    assert type(arr) is np.ndarray and np.shares_memory(arr, m)
    assert as_float_array(X2) is X2
