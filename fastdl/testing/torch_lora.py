"""PyTorch equivalents of fastdl's LoRA layers, for tests and benchmarks (needs torch).

``torch_transformer(layer)`` builds an ``nn.Module`` computing the same
H' = LFFN(MHA(H)) as a ``fastdl.lora.TransformerLayer`` with torch autograd:
the frozen weights (dequantized when the layer's are quantized) as buffers,
every adapter as trainable parameters named like the layer's ``params``
("heads.0.q.A" becomes "heads_0_q_A"), the heads' projections batched into one
matmul each and the attention through ``scaled_dot_product_attention``.
``torch_base_model(layer)`` is the frozen model alone with one ``nn.Linear``
per projection under the layer's module names, for PEFT to wrap.
"""
from __future__ import annotations

import numpy as np

__all__ = ["torch_transformer", "torch_base_model", "param_name"]


def param_name(key: str) -> str:
    return key.replace(".", "_")


def torch_transformer(layer):
    import torch
    from torch import nn
    from torch.nn import functional as F

    dt = torch.float64 if layer.dtype == np.float64 else torch.float32
    d, h, r = layer.d, layer.h, layer.r

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            for p in "qkv":
                w = np.concatenate([layer.frozen_weight(f"heads.{i}.{p}") for i in range(h)],
                                   axis=1)                                     # (d, h·d)
                self.register_buffer(f"W_{p}", torch.tensor(w, dtype=dt))
            for name, key in (("out", "o"), ("ffn", "f")):
                self.register_buffer(f"W_{key}", torch.tensor(layer.frozen_weight(name)))
            self.scales = {}
            for key, arr in layer.params.items():
                self.register_parameter(param_name(key),
                                        nn.Parameter(torch.tensor(arr, dtype=dt)))
            for n, m in layer.lora_layers().items():
                self.scales[n] = m.scale

        def _heads(self, x, p):
            y = x @ getattr(self, f"W_{p}")
            if f"heads.0.{p}" not in self.scales:
                return y
            A = torch.stack([getattr(self, f"heads_{i}_{p}_A") for i in range(h)])   # (h, d, r)
            B = torch.stack([getattr(self, f"heads_{i}_{p}_B") for i in range(h)])
            xa = torch.einsum("nd,hdr->hnr", x, A) * self.scales[f"heads.0.{p}"]
            return y + torch.einsum("hnr,hkr->nhk", xa, B).reshape(x.shape[0], h * d)

        def _proj(self, x, name, key):
            y = x @ getattr(self, f"W_{key}")
            if name in self.scales:
                A, B = getattr(self, f"{name}_A"), getattr(self, f"{name}_B")
                y = y + ((x @ A) * self.scales[name]) @ B.T
            return y

        def forward(self, H):
            bt, n = (1, H.shape[0]) if H.dim() == 2 else H.shape[:2]
            x = H.reshape(bt * n, d)
            q, k, v = (self._heads(x, p).reshape(bt, n, h, d).transpose(1, 2) for p in "qkv")
            o = F.scaled_dot_product_attention(q, k, v, is_causal=layer.causal)
            c = o.transpose(1, 2).reshape(bt * n, h * d)
            y = self._proj(self._proj(c, "out", "o"), "ffn", "f")
            return y.reshape(H.shape)

    return Layer()


def torch_base_model(layer):
    """The frozen layer as nn.Linear modules named "heads.0.q", …, "out", "ffn" (weights
    transposed to torch's (out, in)); its forward is the same H' = LFFN(MHA(H))."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    dt = torch.float64 if layer.dtype == np.float64 else torch.float32
    d, h = layer.d, layer.h

    def linear(name):
        w = layer.frozen_weight(name)
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False).to(dt)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w.T))
        lin.weight.requires_grad_(False)
        return lin

    class Head(nn.Module):
        def __init__(self, i):
            super().__init__()
            for p in "qkv":
                setattr(self, p, linear(f"heads.{i}.{p}"))

    class Base(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(Head(i) for i in range(h))
            self.out = linear("out")
            self.ffn = linear("ffn")

        def forward(self, H):
            heads = []
            for hd in self.heads:
                q, k, v = hd.q(H), hd.k(H), hd.v(H)
                heads.append(F.scaled_dot_product_attention(q, k, v, is_causal=layer.causal))
            return self.ffn(self.out(torch.cat(heads, dim=-1)))

    return Base()
