"""Adapters in PEFT's file format: a directory with ``adapter_model.safetensors``
and ``adapter_config.json``, as ``peft.PeftModel.from_pretrained`` reads it.

Tensor keys are ``base_model.model.<module>.lora_A.weight`` (r, d_in) = Aᵀ and
``…lora_B.weight`` (d_out, r) = B; the config carries ``r``, ``lora_alpha``,
``target_modules`` (the module names), ``use_rslora`` and, when layers differ,
``rank_pattern`` / ``alpha_pattern``.  Only the adapters are stored: the frozen
weights stay with the base model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

__all__ = ["save_adapter", "load_adapter", "WEIGHTS_NAME", "CONFIG_NAME"]

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
_PREFIX = "base_model.model."


def _layers(layers) -> dict:
    from fastdl.lora import LoRAAdapter, LoRALinear, QLoRALinear
    if not isinstance(layers, dict) or not layers:
        raise TypeError(f"layers must be a non-empty dict of module name -> LoRALinear, "
                        f"QLoRALinear or LoRAAdapter, got {type(layers).__name__}")
    for name, lay in layers.items():
        if not isinstance(name, str) or not name or name.startswith(".") or name.endswith("."):
            raise ValueError(f"layer names must be non-empty dotted module names, got {name!r}")
        if not isinstance(lay, (LoRALinear, QLoRALinear, LoRAAdapter)):
            raise TypeError(f"layers[{name!r}] must be a LoRALinear, QLoRALinear or "
                            f"LoRAAdapter, got {type(lay).__name__}")
    return layers


def _common(values):
    """The most frequent value (PEFT's default for r / alpha; the rest go in patterns)."""
    uniq, counts = np.unique(np.asarray(values), return_counts=True)
    return uniq[np.argmax(counts)].item()


def save_adapter(layers, path, *, base_model_name_or_path=None) -> Path:
    """Write the adapters of ``layers`` ({module name: LoRA layer}) to directory
    ``path`` (created if needed) in PEFT's format; returns the directory."""
    from safetensors.numpy import save_file
    layers = _layers(layers)
    if len({l.use_rslora for l in layers.values()}) != 1:
        raise ValueError("all layers must agree on use_rslora (PEFT stores one flag)")
    out = Path(os.fspath(path))
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, lay in layers.items():
        A, B = lay._checked_params()
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(A.T)
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(B)
    r = _common([l.r for l in layers.values()])
    alpha = _common([l.alpha for l in layers.values()])
    config = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model_name_or_path,
        "r": int(r), "lora_alpha": float(alpha), "lora_dropout": float(
            _common([l.dropout for l in layers.values()])),
        "target_modules": sorted(layers), "use_rslora": next(iter(layers.values())).use_rslora,
        "rank_pattern": {n: l.r for n, l in layers.items() if l.r != r},
        "alpha_pattern": {n: l.alpha for n, l in layers.items() if l.alpha != alpha},
        "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None,
    }
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return out


def _pattern(config, key, name, default):
    pat = config.get(key) or {}
    if name in pat:
        return pat[name]
    # PEFT matches pattern keys as suffixes of the module name
    hits = [v for k, v in pat.items() if name.endswith("." + k)]
    return hits[0] if hits else default


def load_adapter(path, layers) -> dict:
    """Read PEFT's adapter files from directory ``path`` into ``layers`` ({module name:
    LoRA layer}, the same names as when saved): A, B (copied into the layers' arrays),
    alpha and the scale; returns ``layers``.  Every layer must have its tensors in the
    file with matching shapes, and every adapter in the file a layer."""
    from safetensors.numpy import load_file
    from fastdl.lora import lora_scale
    layers = _layers(layers)
    src = Path(os.fspath(path))
    for f in (WEIGHTS_NAME, CONFIG_NAME):
        if not (src / f).is_file():
            raise ValueError(f"path must be a directory with {WEIGHTS_NAME} and {CONFIG_NAME}, "
                             f"but {src / f} does not exist")
    config = json.loads((src / CONFIG_NAME).read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{src / CONFIG_NAME}: peft_type must be 'LORA', got "
                         f"{config.get('peft_type')!r}")
    tensors = load_file(str(src / WEIGHTS_NAME))
    names = {}
    for key in tensors:
        # PEFT writes base_model.model.<module>.lora_A.weight (older files may name the adapter)
        stem = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            tag = f".{part}."
            if tag in stem and stem.endswith("weight"):
                names.setdefault(stem.split(tag)[0], {})[part] = tensors[key]
    extra = sorted(set(names) - set(layers))
    missing = sorted(set(layers) - set(names))
    if extra or missing:
        raise ValueError(f"the adapter file's modules and the layers differ: in the file only "
                         f"{extra}, in layers only {missing}")
    use_rslora = bool(config.get("use_rslora", False))
    for name, lay in layers.items():
        a, b = names[name].get("lora_A"), names[name].get("lora_B")
        want_a, want_b = (lay.r, lay.d_in), (lay.d_out, lay.r)
        if a is None or b is None or a.shape != want_a or b.shape != want_b:
            got = (None if a is None else a.shape, None if b is None else b.shape)
            raise ValueError(f"{name}: lora_A/lora_B must have shapes {want_a}/{want_b} for this "
                             f"layer, got {got}")
        r = int(_pattern(config, "rank_pattern", name, config.get("r", lay.r)))
        if r != lay.r:
            raise ValueError(f"{name}: the file's rank is {r}, the layer's {lay.r}")
        alpha = float(_pattern(config, "alpha_pattern", name, config.get("lora_alpha", r)))
        for arr, k in ((a.T, "A"), (b, "B")):
            if not np.isfinite(arr).all():
                raise ValueError(f"{name}: the file's {k} has non-finite values")
        lay.params["A"][...] = a.T
        lay.params["B"][...] = b
        lay.alpha, lay.use_rslora = alpha, use_rslora
        lay.scale = lora_scale(lay.r, alpha, use_rslora)
    return layers
