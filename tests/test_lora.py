"""LoRALinear and QLoRALinear: PEFT's semantics, gradients, merge, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fastdl import quant
from fastdl._gradcheck import gradcheck
from fastdl.lora import LoRALinear, QLoRALinear, lora_scale
from fastdl.testing import rng_for

BACKENDS = ("numpy", "cython")


def _layer(d_in=12, d_out=10, r=3, dtype=np.float64, seed=0, **kw):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_in, d_out))
    lay = LoRALinear(w.astype(dtype), r, rng=seed, **kw)
    lay.params["B"][...] = rng.standard_normal((d_out, r))
    return lay, rng


# ------------------------------------------------------------------ initialization, scale

def test_scale_alpha_over_r_and_rslora():
    assert lora_scale(8, 16) == 2.0
    assert lora_scale(16, 8, use_rslora=True) == pytest.approx(2.0)
    assert lora_scale(4) == 1.0                          # alpha None: alpha = r
    assert lora_scale(4, use_rslora=True) == pytest.approx(2.0)


def test_peft_initialization_output_equals_base():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    lay = LoRALinear(w, 4, alpha=8, bias=bias, rng=1)
    assert np.all(lay.B == 0)
    bound = 1 / np.sqrt(64)                              # kaiming-uniform, a = √5
    assert np.abs(lay.A).max() <= bound and np.abs(lay.A).max() > 0.8 * bound
    x = rng.standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(lay.forward(x), x @ w + bias, rtol=1e-6, atol=1e-6)


def test_other_initializations():
    w = np.ones((100, 50))
    g = LoRALinear(w, 5, init="gaussian", rng=0)
    assert np.all(g.B == 0) and abs(g.A.std() - 1 / 5) < 0.03
    f = LoRALinear(w, 5, init=False, rng=0)
    assert np.abs(f.B).max() <= 1 / np.sqrt(5) and np.abs(f.B).max() > 0


# ------------------------------------------------------------------ against PEFT

def _peft(lay, w, bias, dropout, rslora, dtype):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    base = torch.nn.Module()
    base.proj = torch.nn.Linear(*w.shape, bias=bias is not None).to(tdt)
    with torch.no_grad():
        base.proj.weight.copy_(torch.tensor(w.T))
        if bias is not None:
            base.proj.bias.copy_(torch.tensor(bias))
    cfg = peft.LoraConfig(r=lay.r, lora_alpha=lay.alpha, lora_dropout=dropout,
                          target_modules=["proj"], use_rslora=rslora)
    model = peft.get_peft_model(base, cfg)
    mod = model.base_model.model.proj
    with torch.no_grad():
        mod.lora_A["default"].weight.copy_(torch.tensor(lay.A.T))
        mod.lora_B["default"].weight.copy_(torch.tensor(lay.B))
    model.eval()
    return torch, mod


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rslora", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_peft_outputs_and_adapter_gradients(dtype, rslora, backend):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 16)).astype(dtype)
    bias = rng.standard_normal(16).astype(dtype)
    lay = LoRALinear(w, 4, alpha=6, use_rslora=rslora, dropout=0.3, bias=bias, rng=2)
    lay.params["B"][...] = rng.standard_normal((16, 4))
    torch, mod = _peft(lay, w, bias, 0.3, rslora, dtype)
    lay.eval()                                            # dropout off, as PEFT in eval
    x = rng.standard_normal((2, 5, 24)).astype(dtype)
    dy = rng.standard_normal((2, 5, 16)).astype(dtype)
    y = lay.forward(x, backend=backend)
    dx = lay.backward(dy, backend=backend)
    xt = torch.tensor(x, requires_grad=True)
    yt = mod(xt)
    yt.backward(torch.tensor(dy))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), **tol)
    np.testing.assert_allclose(lay.grads["A"], mod.lora_A["default"].weight.grad.numpy().T, **tol)
    np.testing.assert_allclose(lay.grads["B"], mod.lora_B["default"].weight.grad.numpy(), **tol)


def test_dropout_in_training_scales_kept_inputs():
    lay, rng = _layer(d_in=200, d_out=4, r=2, dropout=0.5)
    x = np.ones((50, 200))
    y = lay.forward(x)
    _, xa, mask, _ = lay._cache
    assert set(np.unique(mask)) == {0.0, 2.0}            # kept inputs scaled by 1/(1-p)
    np.testing.assert_allclose(xa, (x * mask) @ lay.A)
    np.testing.assert_allclose(y, x @ lay.weight + lay.scale * xa @ lay.B.T)
    lay.eval()
    np.testing.assert_allclose(lay.forward(x), x @ lay.weight + lay.scale * (x @ lay.A) @ lay.B.T)


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_gradcheck_float64(dropout):
    lay, rng = _layer(dropout=dropout)
    x = rng.standard_normal((4, 12))
    z = rng.standard_normal((4, 10))
    lay.forward(x)
    mask = lay._cache[2]

    def loss(A, B, x):
        old = lay.params["A"].copy(), lay.params["B"].copy()
        lay.params["A"][...], lay.params["B"][...] = A, B
        lay._mask = lambda n: mask                          # the same dropout mask every call
        y = lay.forward(x)
        diff = y - z
        dx = lay.backward(2 * diff)
        g = dict(lay.grads)
        lay.params["A"][...], lay.params["B"][...] = old
        return float(np.sum(diff ** 2)), (g["A"], g["B"], dx)

    res = gradcheck(loss, (lay.A.copy(), lay.B.copy(), x))
    assert res.ok


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6), st.integers(1, 4),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2 ** 16))
def test_backends_agree_on_random_shapes(n, d_in, d_out, r, dtype, seed):
    r = min(r, d_in, d_out)
    lay, rng = _layer(d_in, d_out, r, dtype=dtype, seed=seed)
    x = rng.standard_normal((n, d_in)).astype(dtype)[:, ::-1]     # a non-contiguous view
    dy = rng.standard_normal((n, d_out)).astype(dtype)
    out = {}
    for b in BACKENDS:
        y = lay.forward(x, backend=b)
        out[b] = (y, lay.backward(dy, backend=b), lay.grads["A"], lay.grads["B"])
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for u, v in zip(*out.values()):
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol)
    x64 = x.astype(np.float64)
    ref = x64 @ lay.weight + lay.scale * (x64 @ lay.A) @ lay.B.T
    np.testing.assert_allclose(out["cython"][0], ref, rtol=tol, atol=tol)


def test_need_dx_false_and_no_input_change():
    lay, rng = _layer()
    x = rng.standard_normal((3, 12))
    x0 = x.copy()
    lay.forward(x)
    x[...] = 0                                          # the cache is a copy
    assert lay.backward(np.ones((3, 10)), need_dx=False) is None
    lay.forward(x0)
    g = lay.backward(np.ones((3, 10)))
    lay.forward(x0.copy())
    np.testing.assert_array_equal(g, lay.backward(np.ones((3, 10))))


# ------------------------------------------------------------------ merge

def test_merge_unmerge_restores_exactly_and_merged_forward_matches():
    lay, rng = _layer(dtype=np.float32)
    w0 = lay.weight.copy()
    x = rng.standard_normal((6, 12)).astype(np.float32)
    y = lay.eval().forward(x)
    lay.merge()
    np.testing.assert_allclose(lay.forward(x), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="merged"):
        lay.backward(np.ones((6, 10), np.float32))
    lay.unmerge()
    np.testing.assert_array_equal(lay.weight, w0)
    np.testing.assert_array_equal(lay.forward(x), y)
    np.testing.assert_allclose(lay.merged_weight(), w0 + lay.scale * lay.A @ lay.B.T, rtol=1e-6)


# ------------------------------------------------------------------ QLoRA

@pytest.mark.parametrize("backend", BACKENDS)
def test_qlora_equals_lora_on_the_dequantized_weight(backend):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((128, 40)).astype(np.float32)
    ql = QLoRALinear(w, 4, alpha=8, rng=1)
    assert ql.qweight.scheme == "nf4" and ql.qweight.double_quant
    ql.params["B"][...] = rng.standard_normal((40, 4))
    lo = LoRALinear(ql.qweight.dequantize(), 4, alpha=8, rng=1)
    lo.params["A"][...], lo.params["B"][...] = ql.A, ql.B
    x = rng.standard_normal((7, 128)).astype(np.float32)
    dy = rng.standard_normal((7, 40)).astype(np.float32)
    for lay in (ql, lo):
        lay.forward(x, backend=backend)
    dxq, dxl = ql.backward(dy, backend=backend), lo.backward(dy, backend=backend)
    np.testing.assert_allclose(dxq, dxl, rtol=1e-4, atol=1e-4)
    for k in "AB":
        np.testing.assert_allclose(ql.grads[k], lo.grads[k], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ql.merged_weight(), lo.merged_weight(), rtol=1e-6, atol=1e-6)


def test_qlora_requantize_and_merge():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((64, 16)).astype(np.float32)
    q0 = quant.quantize(w, 8, block_size=32)
    ql = QLoRALinear(q0, 2, rng=0)
    ql.params["B"][...] = rng.standard_normal((16, 2))
    new, err = ql.requantize()
    assert new.bits == 8 and new.block_size == 32 and err.shape == (64, 16)
    np.testing.assert_allclose(new.dequantize() - ql.merged_weight(), err)
    assert np.abs(err).max() <= np.abs(ql.merged_weight()).max() / 127   # within a step
    x = rng.standard_normal((3, 64)).astype(np.float32)
    ql.eval().merge()
    np.testing.assert_allclose(ql.forward(x), x @ new.dequantize(), rtol=1e-5, atol=1e-5)
    ql.unmerge()
    assert ql.qweight is q0


def test_qlora_frozen_memory_within_target():
    w = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    assert QLoRALinear(w, 8).frozen_bytes() / w.nbytes <= 0.135
    assert LoRALinear(w, 8).frozen_bytes() == w.nbytes


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kw, err, match", [
    (dict(r=0), ValueError, r"r must be in \[1, min\(d_in, d_out\) = 10\].*got 0"),
    (dict(r=11), ValueError, "got 11"),
    (dict(r=2.0), TypeError, "r must be an int"),
    (dict(r=2, alpha=-1), ValueError, "alpha must be > 0"),
    (dict(r=2, dropout=1.0), ValueError, "dropout must be in"),
    (dict(r=2, init="xavier"), ValueError, "init must be one of"),
    (dict(r=2, bias=np.ones(3)), ValueError, r"bias must have shape \(10,\)"),
])
def test_bad_constructor_arguments(kw, err, match):
    w = np.ones((12, 10))
    with pytest.raises(err, match=match):
        LoRALinear(w, **kw)


def test_bad_weights_and_inputs():
    with pytest.raises(ValueError, match="weight must be finite"):
        LoRALinear(np.array([[1.0, np.nan], [0, 1]]), 1)
    with pytest.raises(ValueError, match="2-D"):
        LoRALinear(np.ones(4), 1)
    with pytest.raises(ValueError, match="2-D"):
        QLoRALinear(np.ones((2, 3, 4)), 1)
    lay, _ = _layer()
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 12\)"):
        lay.forward(np.ones((3, 11)))
    with pytest.raises(ValueError, match="x must be finite"):
        lay.forward(np.full((2, 12), np.inf))
    with pytest.raises(ValueError, match="backward needs the forward"):
        lay.backward(np.ones((3, 10)))
    lay.forward(np.ones((3, 12)))
    with pytest.raises(ValueError, match=r"dy must have shape \(3, 10\)"):
        lay.backward(np.ones((4, 10)))
    lay.params["A"] = np.ones((3, 3))
    with pytest.raises(ValueError, match=r"params\['A'\] must be a float64 array of shape"):
        lay.forward(np.ones((3, 12)))


def test_quantized_weight_shape_mismatch_is_reported():
    q = quant.quantize(np.ones((64, 8), np.float32), 4, scheme="nf4")
    ql = QLoRALinear(q, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 64\)"):
        ql.forward(np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match=r"r must be in \[1, min\(d_in, d_out\) = 8\]"):
        QLoRALinear(q, 9)


def test_seeded_layers_are_reproducible():
    rng = rng_for("lora-seed")
    w = rng.standard_normal((16, 8))
    a, b = LoRALinear(w, 2, rng=7), LoRALinear(w, 2, rng=7)
    np.testing.assert_array_equal(a.A, b.A)
