"""Benchmark cases for the LoRA layers: one forward and one backward (adapter
gradients and dx), float32.

* ``LoRALinear`` over a float32 (d, d) weight; peer ``peft+torch``: PEFT's LoRA
  over ``torch.nn.Linear`` with autograd (x requires a gradient, as fastdl's
  backward returns dx).
* ``QLoRALinear`` over NF4 blocks of 64 with double quantization; peers
  ``peft+bnb`` (PEFT over bitsandbytes' ``Linear4bit`` on the CPU, the same NF4
  format) and ``fastdl-lora`` (LoRALinear on the float weight, so ``vs:fastdl-lora``
  is what the quantized base costs); metric ``frozen/float32``: the quantized
  weight's bytes over the float32 weight's.
* ``TransformerLayer`` (MHA + LFFN, adapters on q, k, v, f); the torch peer is
  the same layer with autograd (``fastdl.testing.torch_lora.torch_transformer``).

The adapters' B are random (not PEFT's zeros) so no product is trivially zero.
The limit is the float32 matrix products the call must do at the least, as one
``np.matmul`` of the same multiply-adds, measured in the same run.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from fastdl.bench.case import Case, register
from fastdl.lora import LoRALinear, QLoRALinear, TransformerLayer

NF4 = dict(bits=4, scheme="nf4", block_size=64, double_quant=True)


def _have(*mods):
    return all(importlib.util.find_spec(m) is not None for m in mods)


def _randomize_b(layers, rng):
    for lay in layers:
        lay.params["B"][...] = rng.standard_normal(lay.params["B"].shape) / np.sqrt(lay.r)


def _limit(m, k, n, seed):
    def make(inp):
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        return {"sgemm": lambda: np.matmul(a, b, out=out)}
    return make


def _autograd_step(module, x, dy):
    """A thunk: forward of ``module`` on x (NumPy, made to require a gradient), then the
    backward of dy, with the gradients of x and of the trainable parameters cleared
    first (so each call does the same work)."""
    import torch
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    params = [p for p in module.parameters() if p.requires_grad]

    def run():
        xt.grad = None
        for p in params:
            p.grad = None
        y = module(xt)
        y.backward(dyt)
        return y
    return run


def _peft_peer(inp, quantized):
    import torch
    from peft import LoraConfig, get_peft_model

    lay = inp["lora"]
    d_in, d_out = lay.d_in, lay.d_out
    w = torch.from_numpy(np.ascontiguousarray(inp["w"].T))
    if quantized:
        import bitsandbytes as bnb
        base = bnb.nn.Linear4bit(d_in, d_out, bias=False, quant_type="nf4",
                                 compress_statistics=True, compute_dtype=torch.float32)
        base.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4",
                                        compress_statistics=True)
        base = base.to("cpu")
    else:
        base = torch.nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            base.weight.copy_(w)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = base

    model = get_peft_model(Model(), LoraConfig(r=lay.r, lora_alpha=lay.alpha,
                                               target_modules=["proj"]))
    mod = model.base_model.model.proj
    with torch.no_grad():
        mod.lora_A["default"].weight.copy_(torch.from_numpy(lay.A.T.copy()))
        mod.lora_B["default"].weight.copy_(torch.from_numpy(lay.B.copy()))
    return _autograd_step(mod, inp["x"], inp["dy"])


def linear_case(d, n, r, *, quantized=False, quick=False, targets=None, seed=0) -> Case:
    kind = "qlora-nf4dq" if quantized else "lora"

    def setup():
        rng = np.random.default_rng(seed)
        w = (rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)).astype(np.float32)
        lora = LoRALinear(w, r, alpha=2 * r, rng=seed)
        _randomize_b([lora], rng)
        inp = {"w": w, "lora": lora, "x": rng.standard_normal((n, d), dtype=np.float32),
               "dy": rng.standard_normal((n, d), dtype=np.float32)}
        if quantized:
            q = QLoRALinear(w, r, alpha=2 * r, rng=seed, **NF4)
            q.params["A"][...] = lora.A
            q.params["B"][...] = lora.B
            inp["qlora"] = q
        return inp

    def run(layer, inp, backend):
        layer.forward(inp["x"], backend=backend)
        return layer.backward(inp["dy"], backend=backend)

    def call(inp, backend):
        return run(inp["qlora" if quantized else "lora"], inp, backend)

    peers = {}
    if quantized:
        peers["fastdl-lora"] = lambda inp: (lambda: run(inp["lora"], inp, None))
        if _have("torch", "peft", "bitsandbytes"):
            peers["peft+bnb"] = lambda inp: _peft_peer(inp, True)
    elif _have("torch", "peft"):
        peers["peft+torch"] = lambda inp: _peft_peer(inp, False)

    def metrics(inp, backend):
        out = {"trainable": inp["lora"].trainable_parameters()}
        if quantized:
            out["frozen/float32"] = inp["qlora"].frozen_bytes() / inp["w"].nbytes
        return out

    # forward x W, x A, (xA) Bᵀ; backward dy Wᵀ, dy B, (dyB) Aᵀ, dyᵀ(xA), xᵀ(dyB)
    macs = 2 * n * d * d + 6 * n * d * r
    wbytes = 4 * d * d if not quantized else int(4.13 * d * d / 8)
    return Case(
        name=f"lora/{kind}/linear/d{d}xn{n}xr{r}/float32", op="lora_bwd", setup=setup,
        call=call, bytes_read=wbytes + 4 * (2 * n * d + 2 * d * r),
        bytes_written=4 * (2 * n * d + 2 * d * r), flops=2 * macs, macs=macs, quick=quick,
        targets=targets or {}, peers=peers, metrics=metrics, limit=_limit(n, 2 * d, d, seed),
        warm_s=0.15, params={"d": d, "n": n, "r": r, "weight": kind})


def _torch_layer_peer(inp):
    from fastdl.testing.torch_lora import torch_transformer
    return _autograd_step(torch_transformer(inp["layer"]), inp["H"], inp["dH"])


def transformer_case(d, h, n, r, *, quantize=None, quick=False, targets=None, seed=0) -> Case:
    tag = "float32" if quantize is None else "nf4dq"

    def setup():
        rng = np.random.default_rng(seed)
        q = None if quantize is None else {"mha": quantize, "ffn": quantize}
        layer = TransformerLayer(d, h, r, quantize=q, rng=seed, alpha=2 * r)
        _randomize_b(layer.lora_layers().values(), rng)
        return {"layer": layer, "H": rng.standard_normal((n, d), dtype=np.float32),
                "dH": rng.standard_normal((n, d), dtype=np.float32)}

    def call(inp, backend):
        inp["layer"].forward(inp["H"], backend=backend)
        return inp["layer"].backward(inp["dH"], backend=backend)

    def metrics(inp, backend):
        lay = inp["layer"]
        return {"trainable": lay.trainable_parameters(),
                "frozen MiB": lay.frozen_bytes() / 2 ** 20}

    # forward: 3h n d² + h n d² (W^O) + n d² (W^F) + 2 h n² d (attention) + adapters;
    # backward: the same products for dH and the attention's four
    proj = 3 * h * n * d * d + h * n * d * d + n * d * d
    adapters = 4 * (3 * h + 1) * n * d * r
    att = 2 * h * n * n * d
    macs = 2 * proj + 3 * att + 2 * adapters
    wbytes = 4 * (4 * h + 1) * d * d
    return Case(
        name=f"lora/transformer/{tag}/d{d}xh{h}xn{n}xr{r}/float32", op="attention_bwd",
        setup=setup, call=call, bytes_read=wbytes + 8 * n * d, bytes_written=8 * n * d,
        flops=2 * macs, macs=macs, quick=quick, targets=targets or {},
        torch=_torch_layer_peer if _have("torch") else None, metrics=metrics,
        limit=_limit(n, macs // (n * d), d, seed), warm_s=0.15,
        params={"d": d, "h": h, "n": n, "r": r, "weights": tag})


register(linear_case(1024, 128, 8, quick=True,
                     targets={"cython": {"vs:peft+torch": 1.2}}))
register(linear_case(4096, 512, 16, targets={"cython": {"vs:peft+torch": 1.2}}))
register(linear_case(1024, 128, 8, quantized=True, quick=True, targets={"cython": {
    "vs:peft+bnb": 2.0, "max:frozen/float32": 0.135}}))
register(linear_case(4096, 512, 16, quantized=True, targets={"cython": {
    "vs:peft+bnb": 2.0, "vs:fastdl-lora": 1 / 1.3, "max:frozen/float32": 0.135}}))
register(transformer_case(1024, 4, 128, 8, quick=True, targets={"cython": {"vs_torch": 1.2}}))
register(transformer_case(1024, 4, 128, 8, quantize="nf4"))
