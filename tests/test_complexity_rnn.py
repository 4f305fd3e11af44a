"""The bidirectional RNN's multiply-add and byte counts (fastdl.complexity) against
hand-computed cases, against the multiply-adds the reference actually performs,
and against the arrays the public API actually returns."""
import numpy as np
import pytest

from fastdl import complexity as cx
from fastdl._backends.numpy import rnn as ref
from fastdl.rnn import BiRNNParams, birnn_backward, birnn_forward
from fastdl.testing import count_matmuls


# ------------------------------------------------------------------ hand-computed

@pytest.mark.parametrize("T,B,d", [(1, 1, 1), (3, 2, 4), (64, 32, 128)])
def test_the_d_dimensional_case(T, B, d):
    # per step and direction: W x, U h, V h forward; Vᵀdy, Uᵀδ, ∇W, ∇U, ∇V, Wᵀδ backward
    assert cx.birnn_forward_macs(T, B, d, d, d) == 2 * T * B * 3 * d * d
    assert cx.birnn_backward_macs(T, B, d, d, d) == 2 * T * B * 6 * d * d
    assert cx.birnn_backward_macs(T, B, d, d, d, need_dx=False) == 2 * T * B * 5 * d * d


def test_unequal_sizes_by_hand():
    # T=2, B=1, d_in=3, hidden=5, d_out=7: per step and direction the forward costs
    # 3*5 + 5*5 + 5*7 = 75, the backward 2*35 + 2*25 + 2*15 = 150 (135 without dx)
    assert cx.birnn_forward_macs(2, 1, 3, 5, 7) == 300
    assert cx.birnn_backward_macs(2, 1, 3, 5, 7) == 600
    assert cx.birnn_backward_macs(2, 1, 3, 5, 7, need_dx=False) == 540
    # y: 2*1*7, the states: 2*2*1*5 -> 34 floats
    assert cx.birnn_forward_bytes(2, 1, 3, 5, 7) == 34 * 4
    # dW 2*15 + dU 2*25 + dV 2*35 + dh0 2*5 + dx 2*3 + workspace 2*2*5 = 186 floats
    assert cx.birnn_backward_bytes(2, 1, 3, 5, 7) == 186 * 4
    assert cx.birnn_backward_bytes(2, 1, 3, 5, 7, need_dx=False, itemsize=8) == 180 * 8
    # the biases' gradients: 2*5 + 7 more
    assert cx.birnn_backward_bytes(2, 1, 3, 5, 7, bias=True) == 203 * 4


def test_padding_costs_only_its_real_steps():
    # lengths 3 and 1 of T=3: 4 real steps, not 6
    assert cx.birnn_steps(3, 2, [3, 1]) == 4
    assert cx.birnn_forward_macs(3, 2, 4, 4, 4, lengths=[3, 1]) == 2 * 4 * 3 * 16
    assert cx.birnn_backward_macs(3, 2, 4, 4, 4, lengths=[3, 1]) == 2 * 4 * 6 * 16
    # the outputs stay padded (T, B, ·) arrays; the δ workspace shrinks to 2*4*4 floats
    assert cx.birnn_forward_bytes(3, 2, 4, 4, 4, lengths=[3, 1]) == 4 * (3 * 2 * 12)
    full = cx.birnn_backward_bytes(3, 2, 4, 4, 4)
    assert full - cx.birnn_backward_bytes(3, 2, 4, 4, 4, lengths=[3, 1]) == 4 * 2 * 2 * 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(T=0), "T must be a positive int, got 0"),
    (dict(hidden=2.0), "hidden must be a positive int, got 2.0"),
    (dict(d_out=True), "d_out must be a positive int, got True"),
    (dict(itemsize=0), "itemsize must be a positive int, got 0"),
    (dict(lengths=[3]), "lengths must have B=2 entries, got 1"),
    (dict(lengths=[3, 4]), r"lengths must be in \[1, T=3\], got 4"),
    (dict(lengths=[0, 1]), r"lengths must be in \[1, T=3\], got 0"),
])
@pytest.mark.parametrize("fn", [cx.birnn_forward_bytes, cx.birnn_backward_bytes])
def test_bad_arguments_name_themselves(fn, kwargs, match):
    args = dict(T=3, B=2, d_in=4, hidden=4, d_out=4)
    args.update(kwargs)
    extra = {k: args.pop(k) for k in ("itemsize", "lengths") if k in args}
    with pytest.raises(ValueError, match=match):
        fn(*args.values(), **extra)


# ------------------------------------------------------------------ counted multiply-adds

def test_the_shim_counts_a_product_and_leaves_the_result_alone():
    a, b = np.ones((2, 3, 4)), np.full((4, 5), 2.0)
    total, out = count_matmuls(lambda x, y: (x @ y, np.matmul(x[0], y)), a, b)
    with pytest.raises(ValueError, match="matrix products"):       # no vector products
        count_matmuls(lambda x, y: x[0, 0] @ y, a, b)
    assert total == 2 * 3 * 4 * 5 + 3 * 4 * 5
    np.testing.assert_array_equal(np.asarray(out[0]), np.full((2, 3, 5), 8.0))


@pytest.mark.parametrize("T,B,I,H,O", [(1, 1, 1, 1, 1), (3, 2, 4, 4, 4), (5, 3, 2, 7, 3),
                                       (4, 1, 6, 3, 9)])
@pytest.mark.parametrize("need_dx", [True, False])
def test_the_reference_performs_exactly_the_counted_multiply_adds(T, B, I, H, O, need_dx):
    rng = np.random.default_rng(T * 100 + H)
    p = BiRNNParams.init(I, H, O, rng=rng, dtype=np.float64)
    x = rng.standard_normal((T, B, I))
    weights = (p.W_f, p.U_f, p.V_f, p.W_b, p.U_b, p.V_b)
    fwd, (y, h_f, h_b) = count_matmuls(ref.birnn_fwd, x, *weights, None, None, None, None, None,
                                  None)
    assert fwd == cx.birnn_forward_macs(T, B, I, H, O)
    dy = rng.standard_normal((T, B, O))
    bwd, _ = count_matmuls(ref.birnn_bwd, dy, x, np.asarray(h_f), np.asarray(h_b), *weights,
                      None, None, None, need_dx)
    assert bwd == cx.birnn_backward_macs(T, B, I, H, O, need_dx=need_dx)


@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("lengths", [None, [3, 1, 5]])
def test_the_cython_kernel_counts_what_the_formulas_say(need_dx, lengths):
    rnn = pytest.importorskip("fastdl._backends.cython._rnn")
    if not hasattr(rnn, "last_macs"):
        pytest.skip("this build's Cython RNN kernel does not count its multiply-adds")
    T, B, I, H, O = 5, 3, 4, 6, 2
    rng = np.random.default_rng(7)
    p = BiRNNParams.init(I, H, O, rng=rng, dtype=np.float32)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    _, cache = birnn_forward(x, p, lengths=lengths, backend="cython")
    assert rnn.last_macs()["birnn_fwd"] == cx.birnn_forward_macs(T, B, I, H, O,
                                                                lengths=lengths)
    birnn_backward(cache, np.ones((T, B, O), np.float32), need_dx=need_dx)
    assert rnn.last_macs()["birnn_bwd"] == cx.birnn_backward_macs(
        T, B, I, H, O, lengths=lengths, need_dx=need_dx)


# ------------------------------------------------------------------ bytes returned

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", [None, [2, 5, 1]])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("need_dx", [True, False])
def test_the_byte_counts_are_what_the_api_returns(dtype, lengths, bias, need_dx):
    T, B, I, H, O = 5, 3, 4, 6, 2
    rng = np.random.default_rng(3)
    p = BiRNNParams.init(I, H, O, bias=bias, rng=rng, dtype=dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    y, cache = birnn_forward(x, p, lengths=lengths, backend="numpy")
    size = np.dtype(dtype).itemsize
    kept = y.nbytes + cache.h_f.nbytes + cache.h_b.nbytes
    assert kept == cx.birnn_forward_bytes(T, B, I, H, O, itemsize=size, lengths=lengths)
    grads = birnn_backward(cache, np.ones_like(y), need_dx=need_dx)
    returned = sum(a.nbytes for a in grads.as_dict().values())
    real = T * B if lengths is None else sum(lengths)
    workspace = 2 * real * H * size                 # both directions' δ over the real steps
    assert returned + workspace == cx.birnn_backward_bytes(
        T, B, I, H, O, itemsize=size, lengths=lengths, need_dx=need_dx, bias=bias)
