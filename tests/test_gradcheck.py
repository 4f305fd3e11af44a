"""gradcheck itself, and the BiRNN backward under it in float64 (random small sizes,
T = 1 and T = 2 included)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastdl
from fastdl import rnn
from fastdl.rnn_analysis import GradcheckError, gradcheck


def _quadratic(A):
    def fn(x):
        return float(x @ A @ x), (A + A.T) @ x
    return fn


def test_passes_on_a_right_gradient_and_fails_on_a_wrong_one():
    A = np.arange(9.0).reshape(3, 3)
    x = np.array([0.5, -1.0, 2.0])
    res = gradcheck(_quadratic(A), [x])
    assert res.ok and res.max_abs_error[0] < 1e-6 and res.checked[0] == 3

    def wrong(x):
        return float(x @ A @ x), A @ x          # forgets the transpose term
    with pytest.raises(GradcheckError, match="FAILED"):
        gradcheck(wrong, [x])
    res = gradcheck(wrong, [x], raise_exception=False)
    assert not res.ok and res.max_abs_error[0] > 1.0


def test_dict_inputs_none_gradients_and_inputs_unchanged():
    a, b = np.array([1.0, 2.0]), np.array([3.0])
    keep = a.copy(), b.copy()

    def fn(a, b):
        return float(np.sum(a ** 2) * b[0]), {"a": 2 * a * b[0], "b": None}
    res = gradcheck(fn, {"a": a, "b": b})
    assert set(res.max_abs_error) == {"a"}
    assert np.array_equal(a, keep[0]) and np.array_equal(b, keep[1])


def test_max_entries_samples_large_inputs():
    x = np.linspace(-1, 1, 50)
    res = gradcheck(lambda x: (float(np.sum(np.sin(x))), np.cos(x)), [x], max_entries=7)
    assert res.checked[0] == 7


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(fn=1), TypeError, "fn must be callable"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(eps=-1e-3), ValueError, "eps must be in"),
    (dict(inputs=3.0), TypeError, "inputs must be a sequence"),
    (dict(inputs=[np.array(["a"])]), TypeError, "real array"),
])
def test_bad_arguments(kwargs, exc, match):
    args = dict(fn=_quadratic(np.eye(2)), inputs=[np.ones(2)])
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        gradcheck(args.pop("fn"), args.pop("inputs"), **args)


def test_gradient_of_the_wrong_shape():
    with pytest.raises(ValueError, match="has shape"):
        gradcheck(lambda x: (float(x.sum()), np.ones(3)), [np.ones(2)])


def _rnn_backends():
    out = []
    for name in fastdl.testing.BUILTIN_BACKENDS:
        try:
            fastdl.which_backend("birnn_fwd", backend=name)
            out.append(name)
        except (fastdl.BackendNotImplementedError, ValueError):
            pass
    return out


import fastdl.testing  # noqa: E402  (BUILTIN_BACKENDS)


@pytest.mark.parametrize("backend", _rnn_backends())
@settings(max_examples=25, deadline=None)
@given(T=st.integers(1, 4), B=st.integers(1, 3), d_in=st.integers(1, 3),
       hidden=st.integers(1, 4), d_out=st.integers(1, 3), bias=st.booleans(),
       padded=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_birnn_backward_passes_gradcheck(backend, T, B, d_in, hidden, d_out, bias, padded,
                                         seed):
    rng = np.random.default_rng(seed)
    p = rnn.BiRNNParams.init(d_in, hidden, d_out, bias=bias, rng=rng, dtype=np.float64)
    x = rng.standard_normal((T, B, d_in))
    z = rng.standard_normal((T, B, d_out))
    h0 = rng.standard_normal((B, hidden)) * 0.5, rng.standard_normal((B, hidden)) * 0.5
    lengths = rng.integers(1, T + 1, B) if padded else None
    names = list(p.arrays())

    def fn(**a):
        params = rnn.BiRNNParams(**{k: a[k] for k in names})
        loss, g = rnn.birnn_loss_and_grads(a["x"], z, params, a["h0_f"], a["h0_b"],
                                           lengths=lengths, backend=backend)
        return loss, dict(g.params(), x=g.x, h0_f=g.h0_f, h0_b=g.h0_b)

    inputs = dict(p.arrays(), x=x, h0_f=h0[0], h0_b=h0[1])
    gradcheck(fn, inputs, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", fastdl.testing.BUILTIN_BACKENDS)
def test_gradcheck_checks_other_backwards_too(backend):
    # the same helper on layer_norm_backward: L = Σ r ⊙ layer_norm(x, w, b)
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    r = rng.standard_normal((3, 6))

    def fn(x, w, b):
        y = fastdl.layer_norm(x, (6,), w, b, backend=backend)
        dx, dw, db = fastdl.layer_norm_backward(r, x, (6,), w, b, backend=backend)
        return float(np.sum(r * y)), (dx, dw, db)
    res = gradcheck(fn, [x, w, b], atol=1e-7, rtol=1e-6)
    assert res.ok and set(res.checked) == {0, 1, 2}
