"""The BPTT quantities of a bidirectional RNN, term by term, on the course's T = 3 example
(d_in = hidden = d_out = d, no biases) and on random small models."""
import numpy as np
import pytest

import fastdl

from fastdl import rnn
from fastdl.rnn_analysis import (bptt_terms, gradient_flow, hidden_loss_grads,
                                 jacobian_backward, jacobian_forward)

D, T = 3, 3


@pytest.fixture
def backend(backend):
    """The built-in backends that have the RNN ops."""
    try:
        fastdl.which_backend("birnn_fwd", backend=backend)
    except fastdl.BackendNotImplementedError as exc:
        pytest.skip(str(exc))
    return backend


def _example(backend, lengths=None, B=None):
    rng = np.random.default_rng(3)
    p = rnn.BiRNNParams.init(D, D, rng=rng, dtype=np.float64)
    shape = (T, D) if B is None else (T, B, D)
    x = rng.standard_normal(shape)
    z = rng.standard_normal(shape)
    y, cache = rnn.birnn_forward(x, p, lengths=lengths, backend=backend)
    return p, x, z, y, cache


def _step_map(W, U, x_t):
    return lambda h: np.tanh(W @ x_t + U @ h)


def _numeric_jacobian(f, h, eps=1e-6):
    cols = []
    for j in range(len(h)):
        e = np.zeros_like(h)
        e[j] = eps
        cols.append((f(h + e) - f(h - e)) / (2 * eps))
    return np.stack(cols, axis=1)


def test_local_gradients_are_minus_two_V_transpose_residual(backend):
    p, x, z, y, cache = _example(backend)
    g_f, g_b = hidden_loss_grads(cache, z)
    for t in range(T):
        np.testing.assert_allclose(g_f[t], -2 * p.V_f.T @ (z[t] - y[t]), rtol=1e-12)
        np.testing.assert_allclose(g_b[t], -2 * p.V_b.T @ (z[t] - y[t]), rtol=1e-12)


def test_jacobians_are_diag_one_minus_h_squared_times_U(backend):
    p, x, z, y, cache = _example(backend)
    h_f, h_b = cache.h_f[:, 0], cache.h_b[:, 0]
    for t in range(1, T):                      # ∂h_{t+1}^(f)/∂h_t^(f), h_{t+1} at index t
        J = jacobian_forward(cache, t)
        np.testing.assert_allclose(J, np.diag(1 - h_f[t] ** 2) @ p.U_f, rtol=1e-12)
        num = _numeric_jacobian(_step_map(p.W_f, p.U_f, x[t]), h_f[t - 1])
        np.testing.assert_allclose(J, num, atol=1e-8)
    for t in range(2, T + 1):                  # ∂h_{t-1}^(b)/∂h_t^(b), h_{t-1} at index t-2
        J = jacobian_backward(cache, t)
        np.testing.assert_allclose(J, np.diag(1 - h_b[t - 2] ** 2) @ p.U_b, rtol=1e-12)
        num = _numeric_jacobian(_step_map(p.W_b, p.U_b, x[t - 2]), h_b[t - 1])
        np.testing.assert_allclose(J, num, atol=1e-8)


def test_jacobians_against_torch_autograd(backend):
    torch = pytest.importorskip("torch")
    p, x, z, y, cache = _example(backend)
    h_f = cache.h_f[:, 0]
    W, U = torch.tensor(p.W_f), torch.tensor(p.U_f)

    def step(h):
        return torch.tanh(W @ torch.tensor(x[2]) + U @ h)

    J = torch.autograd.functional.jacobian(step, torch.tensor(h_f[1])).numpy()
    np.testing.assert_allclose(jacobian_forward(cache, 2), J, rtol=1e-12, atol=1e-15)


def test_backward_state_does_not_depend_on_the_previous_one(backend):
    # h_{t+1}^(b) is computed before h_t^(b): ∂h_{t+1}^(b)/∂h_t^(b) = 0, so the mirror of
    # the forward Jacobian is ∂h_{t-1}^(b)/∂h_t^(b), whose factor is 1 - (h_{t-1}^(b))²
    p, x, z, y, cache = _example(backend)
    h2 = cache.h_b[1, 0]

    def h3_of_h2(h):          # h_3^(b) only reads h_4^(b) (the initial state) and x_3
        return np.tanh(p.W_b @ x[2] + p.U_b @ np.zeros(D)) + 0 * h
    assert np.array_equal(_numeric_jacobian(h3_of_h2, h2), np.zeros((D, D)))
    J = jacobian_backward(cache, 3)            # ∂h_2/∂h_3 uses h_2, not h_3
    h_b = cache.h_b[:, 0]
    np.testing.assert_allclose(J, np.diag(1 - h_b[1] ** 2) @ p.U_b, rtol=1e-12)
    assert not np.allclose(J, np.diag(1 - h_b[2] ** 2) @ p.U_b)


def test_recursion_and_weight_gradients_term_by_term(backend):
    p, x, z, y, cache = _example(backend)
    g_f, g_b = hidden_loss_grads(cache, z)
    J = {t: jacobian_forward(cache, t) for t in (1, 2)}
    K = {t: jacobian_backward(cache, t) for t in (2, 3)}
    # ∇_{h_t^(f)} L = ∇_{h_t^(f)} L_t + (∂h_{t+1}/∂h_t)ᵀ ∇_{h_{t+1}^(f)} L, from t = 3 down
    G3 = g_f[2]
    G2 = g_f[1] + J[2].T @ G3
    G1 = g_f[0] + J[1].T @ G2
    # ∇_{h_t^(b)} L = ∇_{h_t^(b)} L_t + (∂h_{t-1}/∂h_t)ᵀ ∇_{h_{t-1}^(b)} L, from t = 1 up
    H1 = g_b[0]
    H2 = g_b[1] + K[2].T @ H1
    H3 = g_b[2] + K[3].T @ H2
    terms = bptt_terms(cache, z)
    np.testing.assert_allclose(terms["total_f"][:, 0], np.stack([G1, G2, G3]), rtol=1e-12)
    np.testing.assert_allclose(terms["total_b"][:, 0], np.stack([H1, H2, H3]), rtol=1e-12)
    hf, hb = cache.h_f[:, 0], cache.h_b[:, 0]
    prev_f = [np.zeros(D), hf[0], hf[1]]          # h_0^(f) = 0, h_1, h_2
    Gf, Gb = [G1, G2, G3], [H1, H2, H3]
    dW_b = sum(np.outer((1 - hb[t] ** 2) * Gb[t], x[t]) for t in range(T))
    dU_f = sum(np.outer((1 - hf[t] ** 2) * Gf[t], prev_f[t]) for t in range(T))
    loss, grads = rnn.birnn_loss_and_grads(x, z, p, backend=backend)
    np.testing.assert_allclose(grads.W_b, dW_b, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads.U_f, dU_f, rtol=1e-10, atol=1e-14)
    assert loss == pytest.approx(float(np.sum((z - y) ** 2)), rel=1e-12)


@pytest.mark.parametrize("lengths", [None, [3, 1, 2]])
@pytest.mark.parametrize("bias", [False, True])
def test_bptt_terms_equal_the_backward(backend, lengths, bias):
    rng = np.random.default_rng(7)
    p = rnn.BiRNNParams.init(2, 4, 3, bias=bias, rng=rng, dtype=np.float64)
    x = rng.standard_normal((3, 3, 2))
    z = rng.standard_normal((3, 3, 3))
    h0 = rng.standard_normal((3, 4)) * 0.5, rng.standard_normal((3, 4)) * 0.5
    _, cache = rnn.birnn_forward(x, p, *h0, lengths=lengths, backend=backend)
    _, grads = rnn.birnn_loss_and_grads(x, z, p, *h0, lengths=lengths, backend=backend)
    terms = bptt_terms(cache, z)
    assert set(grads.params()) == {k for k in terms if not k.startswith(("local", "total"))}
    for name, g in grads.params().items():
        np.testing.assert_allclose(terms[name], g, rtol=1e-10, atol=1e-13, err_msg=name)


def test_jacobians_of_a_padded_batch_stop_at_each_length(backend):
    p, x, z, y, cache = _example(backend, lengths=[3, 1], B=2)
    assert jacobian_forward(cache, 1).shape == (2, D, D)
    assert np.array_equal(jacobian_forward(cache, 1)[1], np.zeros((D, D)))
    assert not np.allclose(jacobian_forward(cache, 1)[0], 0)
    # sequence 1 has one step: h_2^(b) is its initial state, ∂h_1/∂h_2 is defined
    assert not np.allclose(jacobian_backward(cache, 2)[1], 0)
    assert np.array_equal(jacobian_backward(cache, 3)[1], np.zeros((D, D)))


@pytest.mark.parametrize("fn,bad", [(jacobian_forward, (-1, T)),
                                    (jacobian_backward, (1, T + 2))])
def test_jacobian_steps_out_of_range(backend, fn, bad):
    *_, cache = _example(backend)
    for t in bad:
        with pytest.raises(ValueError, match=r"t must be in"):
            fn(cache, t)
    with pytest.raises(TypeError, match=r"t must be an int"):
        fn(cache, 1.0)
    with pytest.raises(TypeError, match=r"cache"):
        fn("not a cache", 1)


def _linear_regime(scale, T=6):
    """x = 0 and a tiny h0: h stays near 0, every Jacobian is ≈ U = scale · Q."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    p = rnn.BiRNNParams(W_f=np.zeros((4, 2)), U_f=scale * q, V_f=np.eye(4)[:2],
                        W_b=np.zeros((4, 2)), U_b=scale * q.T, V_b=np.eye(4)[:2])
    return p, np.zeros((T, 2)), np.full(4, 1e-9)


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_gradient_flow_shows_vanishing_and_exploding(backend, scale):
    p, x, h0 = _linear_regime(scale)
    y, cache = rnn.birnn_forward(x, p, h0, h0, backend=backend)
    flow = gradient_flow(cache, dy=np.ones_like(y))
    np.testing.assert_allclose(flow.jacobian_norm_f, scale ** np.arange(1, 7), rtol=1e-6)
    np.testing.assert_allclose(flow.jacobian_norm_b, scale ** np.arange(1, 7), rtol=1e-6)
    assert flow.rate("f") == pytest.approx(scale, rel=1e-6)
    assert flow.rate("b") == pytest.approx(scale, rel=1e-6)


def test_gradient_flow_norms_and_padding(backend):
    p, x, z, y, cache = _example(backend, lengths=[3, 2], B=2)
    flow = gradient_flow(cache, z)
    terms = bptt_terms(cache, z)
    np.testing.assert_allclose(flow.grad_norm_f[0], np.linalg.norm(terms["total_f"][:, 0],
                                                                   axis=1))
    assert np.isnan(flow.grad_norm_f[1, 2]) and np.isnan(flow.jacobian_norm_b[1, 2])
    assert np.isfinite(flow.jacobian_norm_f[1, :2]).all()


def test_gradient_flow_plot(backend, tmp_path):
    pytest.importorskip("matplotlib")
    p, x, z, y, cache = _example(backend)
    path = gradient_flow(cache, z).plot(tmp_path / "flow.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_exactly_one_of_z_and_dy(backend):
    p, x, z, y, cache = _example(backend)
    with pytest.raises(TypeError, match="exactly one of z"):
        hidden_loss_grads(cache)
    with pytest.raises(TypeError, match="exactly one of z"):
        bptt_terms(cache, z, dy=z)
    with pytest.raises(ValueError, match="z must have shape"):
        hidden_loss_grads(cache, z[:2])
