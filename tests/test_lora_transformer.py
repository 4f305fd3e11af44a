"""The transformer layer H' = LFFN(MHA(H)) with adapters: torch autograd, gradcheck,
quantized stages, attention semantics, bad input."""
import numpy as np
import pytest

from fastdl._gradcheck import gradcheck
from fastdl.lora import TransformerLayer
from fastdl.lora_transformer import QUANT_PRESETS

BACKENDS = ("numpy", "cython")


def _layer(d=6, h=2, r=2, seed=0, **kw):
    lay = TransformerLayer(d, h, r, rng=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    for k, v in lay.params.items():
        if k.endswith(".B"):
            v[...] = rng.standard_normal(v.shape) * 0.3
    return lay, rng


def _formula(lay, H):
    """H' from the layer's equations, head by head, in float64."""
    mods = lay.modules

    def proj(name, x):
        m = mods.get(name)
        y = x @ lay.frozen_weight(name, np.float64)
        if name in lay.lora_layers():
            y = y + m.scale * (x @ m.A) @ m.B.T
        return y
    heads = []
    for i in range(lay.h):
        q, k, v = (proj(f"heads.{i}.{p}", H) for p in "qkv")
        s = q @ k.T / np.sqrt(lay.d)
        if lay.causal:
            s = np.where(np.tri(len(H), dtype=bool), s, -np.inf)
        p = np.exp(s - s.max(1, keepdims=True))
        heads.append((p / p.sum(1, keepdims=True)) @ v)
    return proj("ffn", proj("out", np.concatenate(heads, axis=1)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_is_the_formula(causal, backend):
    lay, rng = _layer(causal=causal, dtype=np.float64)
    H = rng.standard_normal((5, 6))
    np.testing.assert_allclose(lay.forward(H, backend=backend), _formula(lay, H),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("quantize", [None, {"mha": "nf4", "ffn": "int8"}])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_autograd(dtype, quantize, causal, backend):
    torch = pytest.importorskip("torch")
    from fastdl.testing.torch_lora import param_name, torch_transformer
    lay, rng = _layer(d=8, h=3, causal=causal, dtype=dtype, quantize=quantize,
                      lora_targets=("q", "k", "v", "o", "f"))
    mod = torch_transformer(lay)
    H = rng.standard_normal((2, 5, 8)).astype(dtype)
    dH = rng.standard_normal((2, 5, 8)).astype(dtype)
    y = lay.forward(H, backend=backend)
    dx = lay.backward(dH, backend=backend)
    Ht = torch.tensor(H, requires_grad=True)
    yt = mod(Ht)
    yt.backward(torch.tensor(dH))
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, Ht.grad.numpy(), **tol)
    for k, g in lay.grads.items():
        np.testing.assert_allclose(g, getattr(mod, param_name(k)).grad.numpy(), **tol,
                                   err_msg=k)


def test_gradcheck_float64_every_adapter_and_H():
    lay, rng = _layer(d=4, h=2, r=1, dtype=np.float64, causal=True)
    keys = sorted(lay.params)
    H = rng.standard_normal((3, 4))
    z = rng.standard_normal((3, 4))

    def loss(H, **params):
        saved = {k: lay.params[k].copy() for k in keys}
        for k in keys:
            lay.params[k][...] = params[k.replace(".", "_")]
        diff = lay.forward(H) - z
        dH = lay.backward(2 * diff)
        grads = dict(lay.grads)
        for k in keys:
            lay.params[k][...] = saved[k]
        return float(np.sum(diff ** 2)), {"H": dH, **{k.replace(".", "_"): grads[k] for k in keys}}

    inputs = {"H": H, **{k.replace(".", "_"): lay.params[k].copy() for k in keys}}
    assert gradcheck(lambda **kw: loss(kw.pop("H"), **kw), inputs).ok


def test_adapters_per_head_and_trainable_count():
    lay, _ = _layer(d=16, h=4, r=3)
    # per head A, B for each of q, k, v (6·h·d·r) and the LFFN's (2·d·r)
    assert lay.trainable_parameters() == 6 * 4 * 16 * 3 + 2 * 16 * 3
    assert sorted(lay.lora_layers())[:2] == ["ffn", "heads.0.k"]
    only_f = TransformerLayer(16, 4, 3, lora_targets=("f",))
    assert only_f.trainable_parameters() == 2 * 16 * 3


def test_quantized_stages_use_the_preset_formats_and_save_memory():
    lay = TransformerLayer(64, 2, 4, quantize={"mha": "nf4", "ffn": "int8"}, rng=0)
    q = lay.qkv["v"]                                            # every head's W^V, (d, h·d)
    assert (q.scheme, q.bits, q.block_size, q.double_quant) == ("nf4", 4, 64, True)
    assert q.shape == (64, 128)
    assert lay.modules["ffn"].qweight.bits == 8
    assert lay.modules["out"].qweight.shape == (128, 64)        # W^O is not adapted
    f32 = TransformerLayer(64, 2, 4, rng=0)
    assert lay.frozen_bytes("mha") / f32.frozen_bytes("mha") <= 0.135
    assert f32.frozen_bytes() == 4 * (4 * 2 + 1) * 64 * 64
    assert set(QUANT_PRESETS) >= {"nf4", "int4", "int8"}


def test_batches_are_independent():
    lay, rng = _layer(dtype=np.float64)
    H = rng.standard_normal((3, 4, 6))
    y = lay.forward(H)
    for b in range(3):
        np.testing.assert_allclose(y[b], lay.forward(H[b]), rtol=1e-12, atol=1e-12)


def test_given_weights_are_used():
    d, h = 4, 2
    rng = np.random.default_rng(0)
    w = {"q": rng.standard_normal((h, d, d)), "k": rng.standard_normal((h, d, d)),
         "v": rng.standard_normal((h, d, d)), "o": rng.standard_normal((h * d, d)),
         "f": rng.standard_normal((d, d))}
    lay = TransformerLayer(d, h, 1, weights=w, dtype=np.float64)
    np.testing.assert_array_equal(lay.frozen_weight("heads.1.k"), w["k"][1])
    np.testing.assert_array_equal(lay.frozen_weight("out"), w["o"])
    with pytest.raises(ValueError, match="name must be 'heads.<i>.<q|k|v>' with i < 2"):
        lay.frozen_weight("heads.2.q")


@pytest.mark.parametrize("kw, err, match", [
    (dict(lora_targets=("q", "x")), ValueError, "lora_targets must be distinct names"),
    (dict(quantize={"attn": "nf4"}), ValueError, "quantize must be None or a dict"),
    (dict(quantize={"mha": "fp8"}), ValueError, r"quantize\['mha'\] must be None, a dict"),
    (dict(quantize={"mha": {"scheme": "nf4"}}), TypeError, "with at least 'bits'"),
    (dict(dtype=np.float16), ValueError, "dtype must be float32 or float64"),
    (dict(weights={"q": 1}), ValueError, "weights must be a dict with the keys"),
])
def test_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match):
        TransformerLayer(4, 2, 1, **kw)


def test_bad_inputs():
    with pytest.raises(ValueError, match="r must be <= d = 4"):
        TransformerLayer(4, 2, 5)
    lay, _ = _layer()
    with pytest.raises(ValueError, match=r"H must have shape \(n, 6\)"):
        lay.forward(np.ones((3, 5)))
    with pytest.raises(ValueError, match="H must be finite"):
        lay.forward(np.full((2, 6), np.nan))
    with pytest.raises(ValueError, match="backward needs a forward"):
        lay.backward(np.ones((2, 6)))
    lay.forward(np.ones((2, 6)))
    with pytest.raises(ValueError, match=r"dH must have shape \(2, 6\)"):
        lay.backward(np.ones((3, 6)))


def test_per_tensor_quantization_keeps_one_scale_per_head():
    """A per-tensor format (block_size None: W̃ = ⌊W/Δ⌋, Δ = max|W|/(2^(m-1)-1)) gets one Δ
    per head's W, not one for all heads side by side."""
    from fastdl import complexity
    from fastdl.quant import quantize
    spec = {"bits": 8, "block_size": None, "rounding": "floor"}
    w = {"q": np.stack([np.full((4, 4), 1.0), np.full((4, 4), 100.0)]), "k": np.ones((2, 4, 4)),
         "v": np.ones((2, 4, 4)), "o": np.ones((8, 4)), "f": np.ones((4, 4))}
    w["q"][0, 0, 0] = 0.5
    lay = TransformerLayer(4, 2, 1, weights=w, quantize={"mha": spec}, dtype=np.float64)
    assert isinstance(lay.qkv["q"], list) and len(lay.qkv["q"]) == 2
    own = quantize(w["q"][0], **spec).dequantize(np.float64)
    np.testing.assert_array_equal(lay.frozen_weight("heads.0.q"), own)
    assert lay.frozen_bytes("mha") * 8 == complexity.frozen_weight_bits(4, 2, stage="mha",
                                                                        quant=spec)
    blockwise = TransformerLayer(4, 2, 1, weights=w, quantize={"mha": "int8"})
    assert not isinstance(blockwise.qkv["q"], list) and blockwise.qkv["q"].shape == (4, 8)
