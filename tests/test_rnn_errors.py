"""Bad input to fastdl.rnn and fastdl.nn.BiRNN: a ValueError/TypeError naming the argument, and
the inputs (x, h0, lengths, params, dy) unchanged after every call, good or bad; the cache is
the forward's own (changing the caller's arrays afterwards does not change the gradients)."""
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import fastdl.nn as nn
from fastdl import rnn as F
from _rnn_helpers import rnn_backend  # noqa: F401 (a fixture)
from fastdl.testing import rng_for

T, B, I, H, O = 5, 2, 3, 4, 2


def operands(dtype=np.float32):
    g = rng_for("errors", dtype)
    p = F.BiRNNParams.init(I, H, O, bias=True, rng=0, dtype=dtype)
    x = g.standard_normal((T, B, I)).astype(dtype)
    h0 = g.standard_normal((B, H)).astype(dtype)
    dy = g.standard_normal((T, B, O)).astype(dtype)
    return p, x, h0, dy


def snapshot(*arrays):
    return [np.array(a, copy=True) if isinstance(a, np.ndarray) else None for a in arrays]


def assert_unchanged(before, after):
    for b, a in zip(before, after):
        if b is not None:
            np.testing.assert_array_equal(np.asarray(a), b)


def with_nan(a, at=(0,)):
    a = a.copy()
    a[at] = np.nan
    return a


# (id, the forward arguments that differ from good ones, exception, message pattern);
# "nan" / "inf" put that value into the good array
FORWARD_CASES = [
    ("x d_in", dict(x=np.zeros((T, B, I + 1), np.float32)), ValueError, r"x must have d_in=3"),
    ("x T=0", dict(x=np.zeros((0, B, I), np.float32)),
     ValueError, r"x must have at least one step"),
    ("x B=0", dict(x=np.zeros((T, 0, I), np.float32)), ValueError, r"x must hold at least one seq"),
    ("x B=0 batch_first", dict(x=np.zeros((0, T, I), np.float32), batch_first=True), ValueError,
     r"x must hold at least one sequence"),
    ("x unbatched T=0", dict(x=np.zeros((0, I), np.float32)), ValueError, r"T >= 1"),
    ("x 1-D", dict(x=np.zeros(I, np.float32)), ValueError, r"x must be 2-D .* or 3-D"),
    ("x 4-D", dict(x=np.zeros((1, T, B, I), np.float32)),
     ValueError, r"x must be 2-D .* got shape"),
    ("x float16", dict(x=np.zeros((T, B, I), np.float16)), TypeError, r"x must be a float32 or "),
    ("x float64", dict(x=np.zeros((T, B, I))), TypeError,
     r"x must have the parameters' dtype float32, got float64"),
    ("x int", dict(x=np.zeros((T, B, I), np.int64)), TypeError, r"x must be a float32 or float64"),
    ("x complex", dict(x=np.zeros((T, B, I), complex)), TypeError, r"x must be a float32"),
    ("x ragged", dict(x=[[1.0, 2.0], [1.0]]), TypeError, r"x must be array-like"),
    ("x masked", dict(x=np.ma.zeros((T, B, I), np.float32)),
     TypeError, r"x must not be a numpy ma"),
    ("x nan", dict(x="nan"), ValueError, r"x must be finite, got nan"),
    ("x inf", dict(x="inf"), ValueError, r"x must be finite, got inf"),
    ("h0_f shape", dict(h0_f=np.zeros((B, H + 1), np.float32)), ValueError,
     r"h0_f must have shape \(2, 4\) \(batch B=2, hidden=4\), got \(2, 5\)"),
    ("h0_b shape", dict(h0_b=np.zeros((2, B, H), np.float32)), ValueError, r"h0_b must have shape"),
    ("h0 unbatched", dict(x=np.zeros((T, I), np.float32), h0_f=np.zeros((1, H), np.float32)),
     ValueError, r"h0_f must have shape \(4,\) \(hidden=4: x is one sequence\)"),
    ("h0_b nan", dict(h0_b="nan"), ValueError, r"h0_b must be finite, got nan"),
    ("h0_f complex", dict(h0_f=np.zeros((B, H), complex)), TypeError, r"h0_f must be a real array"),
    ("h0_f text", dict(h0_f="text"), TypeError, r"h0_f must be a real array"),
    ("h0_f overflow", dict(h0_f=np.full((B, H), 1e300)), ValueError,
     r"h0_f has values too large for float32"),
    ("lengths 0", dict(lengths=[0, T]),
     ValueError, r"lengths must be in \[1, T=5\], got lengths\[0\] = 0"),
    ("lengths > T", dict(lengths=[T, T + 1]), ValueError, r"got lengths\[1\] = 6"),
    ("lengths negative", dict(lengths=[-1, 2]), ValueError, r"lengths must be in \[1, T=5\]"),
    ("lengths huge uint64", dict(lengths=np.array([2 ** 63 + 1, 1], np.uint64)), ValueError,
     r"lengths must be in \[1, T=5\]"),
    ("lengths shape", dict(lengths=[1, 2, 3]), ValueError, r"lengths must have shape \(2,\)"),
    ("lengths 2-D", dict(lengths=[[1, 2]]), ValueError, r"lengths must have shape \(2,\)"),
    ("lengths scalar", dict(lengths=3), ValueError, r"lengths must have shape \(2,\)"),
    ("lengths float", dict(lengths=[1.0, 2.0]),
     TypeError, r"lengths must be an integer array, got dtype float64"),
    ("lengths bool", dict(lengths=[True, True]),
     TypeError, r"lengths must be an integer array, got dtype bool"),
    ("lengths unbatched", dict(x=np.zeros((T, I), np.float32), lengths=[T]), ValueError,
     r"lengths is for a batch of sequences; x is one sequence"),
    ("batch_first int", dict(batch_first=1), TypeError, r"batch_first must be a bool"),
    ("backend unknown", dict(backend="nope"), ValueError, r"unknown backend 'nope'"),
]


def forward_call(p, x, h0, over):
    kw = dict(x=x, h0_f=h0, h0_b=h0, lengths=None, batch_first=False, backend=None)
    kw.update(over)
    for k in ("x", "h0_f", "h0_b"):
        if isinstance(kw[k], str) and kw[k] in ("nan", "inf"):
            a = {"x": x, "h0_f": h0, "h0_b": h0}[k].copy()
            a.flat[1] = float(kw[k])
            kw[k] = a
    args = (kw.pop("x"), p, kw.pop("h0_f"), kw.pop("h0_b"))
    return args, kw


@pytest.mark.parametrize("over,exc,match", [c[1:] for c in FORWARD_CASES],
                         ids=[c[0] for c in FORWARD_CASES])
def test_forward_bad_input(over, exc, match):
    p, x, h0, _ = operands()
    args, kw = forward_call(p, x, h0, over)
    before = snapshot(*args[:1], *args[2:], *p.arrays().values())
    with pytest.raises(exc, match=match):
        F.birnn_forward(*args, **kw)
    assert_unchanged(before, [*args[:1], *args[2:], *p.arrays().values()])


@pytest.mark.parametrize("over,exc,match", [c[1:] for c in FORWARD_CASES
                                            if "batch_first" not in c[1] and "backend" not in c[1]],
                         ids=[c[0] for c in FORWARD_CASES
                              if "batch_first" not in c[1] and "backend" not in c[1]])
def test_layer_forward_bad_input(over, exc, match):
    layer = nn.BiRNN(I, H, O, bias=True, rng=0)
    p, x, h0, _ = operands()
    args, kw = forward_call(p, x, h0, over)
    before = snapshot(args[0], *args[2:], *layer.params.values())
    with pytest.raises(exc, match=match):
        layer(args[0], *args[2:], lengths=kw["lengths"])
    assert_unchanged(before, [args[0], *args[2:], *layer.params.values()])
    with pytest.raises(RuntimeError, match="before forward"):      # nothing was kept
        layer.backward(np.zeros((T, B, O), np.float32))


PARAM_CASES = [
    ("W_f int", dict(W_f=np.zeros((H, I), np.int64)),
     TypeError, r"W_f must be a float32 or float64"),
    ("all float16", "float16",
     TypeError, r"W_f must be a float32 or float64 array, got dtype float16"),
    ("U_f float64", dict(U_f=np.zeros((H, H))), TypeError, r"U_f must have W_f's dtype float32"),
    ("U_b shape", dict(U_b=np.zeros((H, I), np.float32)),
     ValueError, r"U_b must have shape \(4, 4\)"),
    ("V_b shape", dict(V_b=np.zeros((O + 1, H), np.float32)),
     ValueError, r"V_b must have shape \(2, 4\)"),
    ("b_f shape", dict(b_f=np.zeros(H + 1, np.float32)), ValueError, r"b_f must have shape \(4,\)"),
    ("W_f 1-D", dict(W_f=np.zeros(H, np.float32)), ValueError, r"W_f must be a non-empty 2-D"),
    ("W_f empty", dict(W_f=np.zeros((0, I), np.float32)), ValueError, r"W_f must be a non-empty"),
    ("W_f None", dict(W_f=None), TypeError, r"W_f must be an array, got None"),
    ("W_f text", dict(W_f="text"), TypeError, r"W_f must be a float32 or float64"),
    ("c missing", dict(c=None), ValueError, r"b_f, b_b and c must be all given or all None"),
]


@pytest.mark.parametrize("change,exc,match", [c[1:] for c in PARAM_CASES],
                         ids=[c[0] for c in PARAM_CASES])
def test_bad_parameters(change, exc, match):
    p, x, h0, _ = operands()
    arrays = ({n: a.astype(np.float16) for n, a in p.arrays().items()} if change == "float16"
              else {**p.arrays(), **change})
    with pytest.raises(exc, match=match):
        F.BiRNNParams(**arrays)
    # the same arrays swapped into existing params after construction: named by the call
    q = p.copy()
    for n, a in arrays.items():
        setattr(q, n, a)
    with pytest.raises(exc, match="params: " + match):
        F.birnn_forward(x, q)


def test_params_of_another_kind():
    p, x, _, _ = operands()
    for bad in (p.arrays(), None, (p.W_f, p.U_f), nn.BiRNN(I, H, O)):
        with pytest.raises(TypeError, match=r"params must be a fastdl.rnn.BiRNNParams, got "
                                            + type(bad).__name__):
            F.birnn_forward(x, bad)


def test_non_finite_params():
    p, x, _, dy = operands()
    q = p.copy()
    q.U_b[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"params\.U_b must be finite, got inf at index \(1, 2\)"):
        F.birnn_forward(x, q)
    layer = nn.BiRNN(I, H, O, rng=0)
    layer.params["V_f"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"params\.V_f must be finite"):
        layer(x)


def test_params_changed_between_forward_and_backward():
    p, x, _, dy = operands()
    q = p.copy()
    _, cache = F.birnn_forward(x, q)
    q.W_b[0, 0] = np.nan              # was silent NaN gradients
    with pytest.raises(ValueError, match=r"cache\.params\.W_b must be finite"):
        F.birnn_backward(cache, dy)
    q = p.copy()
    _, cache = F.birnn_forward(x, q)
    q.W_f = np.zeros((H + 1, I), np.float32)
    with pytest.raises(ValueError, match=r"cache\.params were changed after the forward"):
        F.birnn_backward(cache, dy)
    q.W_f, q.U_f = np.zeros((H + 1, I), np.float32), np.zeros((H + 1, H + 1), np.float32)
    q.U_f, q.V_f, q.W_b, q.U_b, q.V_b = (np.zeros(s, np.float32) for s in (
        (H + 1, H + 1), (O, H + 1), (H + 1, I), (H + 1, H + 1), (O, H + 1)))
    q.b_f = q.b_b = np.zeros(H + 1, np.float32)
    with pytest.raises(ValueError, match=r"it ran with dtype float32, d_in=3, hidden=4, d_out=2"):
        F.birnn_backward(cache, dy)


def test_layer_params_replaced_badly():
    layer = nn.BiRNN(I, H, O, rng=0)
    _, x, _, _ = operands()
    layer.params["U_f"] = np.zeros((H, H))
    with pytest.raises(ValueError, match=r"layer.params\['U_f'\] must be an array of shape "
                                         r"\(4, 4\) and dtype float32 .*got shape \(4, 4\) "
                                         r"dtype float64"):
        layer(x)
    layer.params["U_f"] = [[0.0] * H] * H
    with pytest.raises(ValueError, match=r"layer.params\['U_f'\] .* got list"):
        layer(x)
    del layer.params["U_f"]
    with pytest.raises(ValueError, match=r"layer.params must have the keys"):
        layer(x)


@pytest.mark.parametrize("dy,exc,match", [
    (np.zeros((T, B, O + 1), np.float32),
     ValueError, r"dy must have shape \(5, 2, 2\) \(the forward's output\)"),
    (np.zeros((B, T, O), np.float32), ValueError, r"dy must have shape \(5, 2, 2\)"),
    (np.zeros((T, O), np.float32), ValueError, r"dy must have shape"),
    (np.zeros((T, B, O), complex), TypeError, r"dy must be a real array"),
    ("text", TypeError, r"dy must be a real array"),
    ("nan", ValueError, r"dy must be finite, got nan"),
    (np.full((T, B, O), 1e300), ValueError, r"dy has values too large for float32"),
], ids=["O", "batch-first", "2-D", "complex", "text", "nan", "overflow"])
def test_backward_bad_dy(dy, exc, match):
    p, x, h0, good = operands()
    if isinstance(dy, str) and dy == "nan":
        dy = with_nan(good)
    _, cache = F.birnn_forward(x, p, h0, h0)
    layer = nn.BiRNN(I, H, O, bias=True, rng=0)
    layer(x, h0, h0)
    before = snapshot(x, h0, dy if isinstance(dy, np.ndarray) else None, *p.arrays().values())
    with pytest.raises(exc, match=match):
        F.birnn_backward(cache, dy)
    with pytest.raises(exc, match=match):
        layer.backward(dy)
    assert_unchanged(before, [x, h0, dy, *p.arrays().values()])


def test_loss_and_grads_bad_targets():
    p, x, _, _ = operands()
    layer = nn.BiRNN(I, H, O, rng=0)
    for z, exc, match in ((np.zeros((T, B, O + 1)), ValueError, r"z must have shape \(5, 2, 2\)"),
                          (with_nan(np.zeros((T, B, O))), ValueError, r"z must be finite"),
                          ("text", TypeError, r"z must be a real array")):
        with pytest.raises(exc, match=match):
            F.birnn_loss_and_grads(x, z, p)
        with pytest.raises(exc, match=match):
            layer.loss_and_grads(x, z)


def test_cache_from_elsewhere():
    p, x, _, dy = operands()
    y, cache = F.birnn_forward(x, p)
    for bad in ((y, cache), {"x": x}, None, y):
        with pytest.raises(TypeError, match=r"cache must be the BiRNNCache of birnn_forward"):
            F.birnn_backward(bad, dy)
    with pytest.raises(TypeError, match=r"need_dx must be a bool"):
        F.birnn_backward(cache, dy, need_dx=1)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(d_in=0), ValueError, r"d_in must be >= 1, got 0"),
    (dict(hidden=2.5), TypeError, r"hidden must be an int"),
    (dict(d_out=True), TypeError, r"d_out must be an int"),
    (dict(bias="yes"), TypeError, r"bias must be a bool"),
    (dict(batch_first=None), TypeError, r"batch_first must be a bool"),
    (dict(dtype=np.float16), TypeError, r"dtype must be float32 or float64, got float16"),
    (dict(dtype="int8"), TypeError, r"dtype must be float32 or float64"),
    (dict(rng="seed"), TypeError, r"rng must be None, an int seed or a numpy.random.Generator"),
    (dict(backend="nope"), ValueError, r"unknown backend 'nope'"),
])
def test_layer_constructor(kwargs, exc, match):
    args = dict(d_in=I, hidden=H)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        nn.BiRNN(args.pop("d_in"), args.pop("hidden"), **args)


# ---------------------------------------- inputs never changed; the cache owns its arrays

def test_good_calls_leave_inputs_unchanged(rnn_backend):
    p, x, h0, dy = operands(np.float64)
    lengths = np.array([T, 2])
    before = snapshot(x, h0, dy, lengths, *p.arrays().values())
    y, cache = F.birnn_forward(x, p, h0, h0, lengths=lengths, backend=rnn_backend)
    F.birnn_backward(cache, dy)
    F.birnn_loss_and_grads(x, dy, p, h0, h0, lengths=lengths, backend=rnn_backend)
    layer = nn.BiRNN(I, H, O, bias=True, dtype=np.float64, backend=rnn_backend)
    layer(x, h0, h0, lengths=lengths)
    layer.backward(dy)
    assert_unchanged(before, [x, h0, dy, lengths, *p.arrays().values()])


@pytest.mark.parametrize("what", ["x", "h0", "lengths"])
def test_cache_does_not_follow_the_callers_arrays(what, rnn_backend):
    """Changing x, h0 or lengths in place after the forward does not change the gradients
    (the cache had kept a time-major C-contiguous x, h0 and int64 lengths by reference)."""
    p, x, h0, dy = operands(np.float64)
    lengths = np.array([T, 2], np.int64)
    want = F.birnn_backward(F.birnn_forward(x.copy(), p, h0.copy(), h0.copy(),
                                            lengths=lengths.copy(), backend=rnn_backend)[1], dy)
    _, cache = F.birnn_forward(x, p, h0, h0, lengths=lengths, backend=rnn_backend)
    {"x": x, "h0": h0, "lengths": lengths}[what][...] = 1
    got = F.birnn_backward(cache, dy)
    for n, a in want.as_dict().items():
        np.testing.assert_array_equal(getattr(got, n), a, err_msg=n)


@pytest.mark.parametrize("unbatched", [False, True])
def test_returned_y_is_not_the_cache(unbatched):
    p, x, _, _ = operands()
    y, cache = F.birnn_forward(x[:, 0] if unbatched else x, p)
    y[...] = 0
    assert cache.y.any()


def test_lists_and_byte_order():
    """A nested list takes the parameters' dtype (it has none of its own); a non-native byte
    order is read as its value."""
    p, x, _, _ = operands()
    want, _ = F.birnn_forward(x, p)
    np.testing.assert_array_equal(F.birnn_forward(x.tolist(), p)[0], want)
    swapped = x.astype(x.dtype.newbyteorder(">" if sys.byteorder == "little" else "<"))
    np.testing.assert_array_equal(F.birnn_forward(swapped, p)[0], want)
    layer = nn.BiRNN(I, H, O, bias=True, rng=0)
    np.testing.assert_array_equal(layer(x.tolist()), want)


def test_dunder_probes_do_not_import_the_analysis():
    code = ("import sys, fastdl.rnn as r; print(hasattr(r, '__wrapped__'), "
            "'fastdl.rnn_analysis' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=root)
    assert out.stdout.split() == ["False", "False"]


def test_huge_finite_inputs_are_not_called_non_finite(rnn_backend):
    # the finiteness check sums first; a sum that overflows must fall back to the exact test
    p = F.BiRNNParams.init(3, 4, rng=0)
    x = np.full((5, 2, 3), 3e38, np.float32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(x.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # and no overflow warning from the check
        y, cache = F.birnn_forward(x, p, backend=rnn_backend)
    assert np.isfinite(y).all()
    x[2, 1, 0] = np.inf
    with pytest.raises(ValueError, match=r"x must be finite, got inf at index \(2, 1, 0\)"):
        F.birnn_forward(x, p, backend=rnn_backend)
