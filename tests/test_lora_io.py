"""save_adapter / load_adapter: PEFT's file format, round trips through PEFT."""
import json

import numpy as np
import pytest

from fastdl.lora import LoRALinear, QLoRALinear, TransformerLayer, load_adapter, save_adapter


def _random_adapters(layers, seed=0):
    rng = np.random.default_rng(seed)
    for lay in layers.values():
        for v in lay.params.values():
            v[...] = rng.standard_normal(v.shape) * 0.3


def test_file_layout_is_peft_s(tmp_path):
    from safetensors.numpy import load_file
    lay = LoRALinear(np.ones((12, 5), np.float32), 3, alpha=6, use_rslora=True)
    _random_adapters({"p": lay})
    save_adapter({"model.proj": lay}, tmp_path)
    t = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sorted(t) == ["base_model.model.model.proj.lora_A.weight",
                         "base_model.model.model.proj.lora_B.weight"]
    np.testing.assert_array_equal(t["base_model.model.model.proj.lora_A.weight"], lay.A.T)
    np.testing.assert_array_equal(t["base_model.model.model.proj.lora_B.weight"], lay.B)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == \
        ("LORA", 3, 6.0, True)
    assert cfg["target_modules"] == ["model.proj"]


def test_round_trip_without_peft_keeps_values_ranks_and_alphas(tmp_path):
    a = LoRALinear(np.ones((8, 6)), 2, alpha=4)
    b = QLoRALinear(np.ones((64, 16), np.float32), 3, alpha=12)
    _random_adapters({"a": a, "b": b})
    save_adapter({"a": a, "b": b}, tmp_path)
    a2 = LoRALinear(np.ones((8, 6)), 2, alpha=1)
    b2 = QLoRALinear(np.ones((64, 16), np.float32), 3)
    load_adapter(tmp_path, {"a": a2, "b": b2})
    for x, y in ((a, a2), (b, b2)):
        np.testing.assert_array_equal(x.A, y.A)
        np.testing.assert_array_equal(x.B, y.B)
        assert (y.alpha, y.scale) == (x.alpha, x.scale)


def test_peft_loads_our_files_and_we_load_peft_s(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from fastdl.testing.torch_lora import torch_base_model
    lay = TransformerLayer(8, 2, 2, alpha=4, use_rslora=True, rng=0, dtype=np.float64)
    _random_adapters(lay.lora_layers())
    save_adapter(lay.lora_layers(), tmp_path / "ours")
    model = peft.PeftModel.from_pretrained(torch_base_model(lay), tmp_path / "ours")
    model.eval()
    H = np.random.default_rng(1).standard_normal((5, 8))
    np.testing.assert_allclose(model(torch.tensor(H)).detach().numpy(), lay.eval().forward(H),
                               rtol=1e-12, atol=1e-12)
    model.save_pretrained(tmp_path / "peft")
    fresh = TransformerLayer(8, 2, 2, rng=0, dtype=np.float64)     # the same frozen weights
    _random_adapters(fresh.lora_layers(), seed=9)
    load_adapter(tmp_path / "peft", fresh.lora_layers())
    for k, v in lay.params.items():
        np.testing.assert_array_equal(fresh.params[k], v)
    np.testing.assert_allclose(fresh.eval().forward(H), lay.forward(H), rtol=1e-13)


def test_peft_rank_and_alpha_patterns_are_read(tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    base = torch.nn.Module()
    base.a = torch.nn.Linear(6, 4, bias=False)
    base.b = torch.nn.Linear(6, 4, bias=False)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["a", "b"],
                          rank_pattern={"b": 3}, alpha_pattern={"b": 9}, init_lora_weights=False)
    peft.get_peft_model(base, cfg).save_pretrained(tmp_path)
    a, b = LoRALinear(np.ones((6, 4)), 2), LoRALinear(np.ones((6, 4)), 3)
    load_adapter(tmp_path, {"a": a, "b": b})
    assert (a.alpha, b.alpha, b.scale) == (4.0, 9.0, 3.0)
    assert np.abs(b.B).max() > 0


def test_bad_files_and_layers(tmp_path):
    lay = LoRALinear(np.ones((8, 6)), 2)
    with pytest.raises(TypeError, match="layers must be a non-empty dict"):
        save_adapter([lay], tmp_path)
    with pytest.raises(TypeError, match=r"layers\['x'\] must be a LoRALinear"):
        save_adapter({"x": 3}, tmp_path)
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        load_adapter(tmp_path / "missing", {"x": lay})
    save_adapter({"x": lay}, tmp_path)
    with pytest.raises(ValueError, match=r"in the file only \['x'\], in layers only \['y'\]"):
        load_adapter(tmp_path, {"y": lay})
    with pytest.raises(ValueError, match=r"x: lora_A/lora_B must have shapes \(3, 8\)/\(6, 3\)"):
        load_adapter(tmp_path, {"x": LoRALinear(np.ones((8, 6)), 3)})
