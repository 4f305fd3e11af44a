"""The course's transformer layer with low-rank adapters: multi-head attention
followed by a linear feed-forward layer, H' = LFFN(MHA(H))::

    LFFN(X)   = X W^F + X A^F (B^F)ᵀ
    MHA(H)    = [head_1(H), …, head_h(H)] W^O
    head_i(H) = softmax(Q_i K_iᵀ / √d) V_i,   Q_i = H W^{Q,i} + s·H A^{Q,i} (B^{Q,i})ᵀ

(K_i, V_i likewise).  Per-head W^{Q,K,V,i} are (d, d), W^O is (h·d, d), W^F is
(d, d), every adapter A, B is (d, r).  No residual connection and no
normalization: exactly the two maps above.  The frozen weights are float32
(or float64) or quantized (``quantize={"mha": spec, "ffn": spec}``, each stage's
operands in one precision: the base products run through ``qmatmul``).
"""
from __future__ import annotations

import math

import numpy as np

from fastdl import ops as _ops
from fastdl._validate import as_float_array, check_finite, check_flag, check_int
from fastdl.lora import LoRAAdapter, LoRALinear, QLoRALinear, count
from fastdl.quant import QuantizedTensor, qmatmul, quantize as _quantize

__all__ = ["TransformerLayer", "QUANT_PRESETS"]

TARGETS = ("q", "k", "v", "o", "f")
QUANT_PRESETS = {             # shorthand names of quantization formats
    "nf4": dict(bits=4, scheme="nf4", block_size=64, double_quant=True),
    "nf4-plain": dict(bits=4, scheme="nf4", block_size=64, double_quant=False),
    "int4": dict(bits=4, scheme="absmax", block_size=64, double_quant=False),
    "int8": dict(bits=8, scheme="absmax", block_size=64, double_quant=False),
}


def _spec(value, name):
    if value is None:
        return None
    if isinstance(value, str):
        if value not in QUANT_PRESETS:
            raise ValueError(f"{name} must be None, a dict of fastdl.quant.quantize keywords or "
                             f"one of {sorted(QUANT_PRESETS)}, got {value!r}")
        return dict(QUANT_PRESETS[value])
    if not isinstance(value, dict) or "bits" not in value:
        raise TypeError(f"{name} must be None, a preset name or a dict with at least 'bits' "
                        f"(fastdl.quant.quantize keywords), got {value!r}")
    # quantize()'s defaults for what the dict leaves out (QLoRALinear's would differ)
    return {"scheme": "absmax", "block_size": 64, "double_quant": False, **value}


class _Frozen:
    """A projection without adapter: y = x W, W float or quantized.  A float W runs as a
    LoRA map of rank 0 (the same kernels, BLAS on fastdl's threads, as the adapted ones)."""

    def __init__(self, w, spec, dtype, term):
        self.qweight = None if spec is None else _quantize(w, **spec)
        self.weight = None if spec is not None else np.ascontiguousarray(w, dtype)
        self.d_in, self.d_out = w.shape
        self.base_term = term
        self._a0 = np.zeros((self.d_in, 0), dtype)
        self._b0 = np.zeros((self.d_out, 0), dtype)

    def fwd(self, x2, backend):
        count("forward", **{self.base_term: x2.shape[0] * self.d_in * self.d_out})
        if self.weight is not None:
            return _ops.lora_fwd(x2, self.weight, self._a0, self._b0, None, None, 0.0,
                                 backend=backend)[0]
        count("dequantized", forward=self.d_in * self.d_out)
        return qmatmul(x2, self.qweight, backend=backend)

    def dx(self, dy2, backend):
        count("backward", **{self.base_term + "_dx": dy2.shape[0] * self.d_in * self.d_out})
        if self.weight is not None:
            x0 = np.empty((dy2.shape[0], self.d_in), dy2.dtype)     # read for dA only: R = 0
            return _ops.lora_bwd(dy2, x0, np.zeros((dy2.shape[0], 0), dy2.dtype), self.weight,
                                 self._a0, self._b0, None, 0.0, True, backend=backend)[2]
        count("dequantized", backward=self.d_in * self.d_out)
        return qmatmul(dy2, self.qweight, transpose=True, backend=backend)

    def frozen_bytes(self):
        return self.weight.nbytes if self.weight is not None else self.qweight.nbytes


class _Heads:
    """Every head's frozen weight of one projection, W^{p,0..h-1} side by side as one
    (d, h·d) product: one matrix (float, or quantized block-wise: blocks run along d
    for each column, so that is each head's own quantization), or one quantized
    matrix per head for a per-tensor scale (block_size None: one Δ per head's W)."""

    def __init__(self, ws, spec, dtype):
        self.d = ws.shape[1]
        if spec is not None and spec.get("block_size") is None:
            self.parts = [_Frozen(w, spec, dtype, "base") for w in ws]
        else:
            self.parts = [_Frozen(np.concatenate(list(ws), axis=1), spec, dtype, "base")]
        self.tensor = [p.weight if p.weight is not None else p.qweight for p in self.parts]
        if len(self.tensor) == 1:
            self.tensor = self.tensor[0]

    def fwd(self, x2, backend):
        if len(self.parts) == 1:
            return self.parts[0].fwd(x2, backend)
        d = self.d
        out = np.empty((x2.shape[0], d * len(self.parts)), x2.dtype)
        for i, p in enumerate(self.parts):
            out[:, i * d:(i + 1) * d] = p.fwd(x2, backend)
        return out

    def dx(self, dcat, backend):
        """Σ_i dcat[:, head i] W_iᵀ."""
        if len(self.parts) == 1:
            return self.parts[0].dx(dcat, backend)
        d, dx = self.d, None
        for i, p in enumerate(self.parts):
            part = p.dx(np.ascontiguousarray(dcat[:, i * d:(i + 1) * d]), backend)
            if dx is None:
                dx = part
            else:
                dx += part
        return dx

    def head(self, i, dtype):
        t, d = self.tensor, self.d
        if isinstance(t, list):
            return t[i].dequantize(dtype)
        full = t.dequantize(dtype) if isinstance(t, QuantizedTensor) else t
        return np.array(full[:, i * d:(i + 1) * d], dtype)

    def frozen_bytes(self):
        return sum(p.frozen_bytes() for p in self.parts)


class TransformerLayer:
    """H' = LFFN(MHA(H)) with adapters on ``lora_targets`` (any of "q", "k", "v", "o",
    "f"; the course's choice ("q", "k", "v", "f") by default).

    ``weights``: optional dict of frozen weights {"q", "k", "v": (h, d, d), "o": (h·d, d),
    "f": (d, d)} (default: uniform in ±1/√fan_in, as torch's Linear); ``quantize``:
    None (float), or {"mha": spec, "ffn": spec} with a spec a preset name
    (``QUANT_PRESETS``: "nf4", "int4", "int8", …) or ``fastdl.quant.quantize``
    keywords; ``causal``: query i attends to keys j <= i.  Adapters follow
    ``LoRALinear`` (alpha, dropout, init, use_rslora).  ``forward(H)`` takes (n, d) or
    (batch, n, d); ``backward(dH)`` fills ``grads`` (same keys as ``params``:
    "heads.0.q.A", "heads.0.q.B", …, "ffn.A", "ffn.B") and returns dL/dH.
    ``lora_layers()`` maps module names ("heads.0.q", …, "out", "ffn") to the adapter
    layers, as ``save_adapter`` takes them; ``frozen_weight(name)`` is a module's
    frozen weight as a float array.

    Every head's frozen W^{Q,i} is stored as columns i·d:(i+1)·d of one (d, h·d) matrix
    per projection (``qkv["q"]``, float or quantized block-wise: blocks run along d for
    each column, so that is each head's own quantization; a per-tensor format keeps one
    quantized matrix per head, a list), multiplied in one GEMM for all heads; each
    head's adapter (a ``LoRAAdapter``) adds its own term to its columns.
    """

    def __init__(self, d, h, r, *, lora_targets=("q", "k", "v", "f"), quantize=None,
                 causal=False, alpha=None, dropout=0.0, init="kaiming", use_rslora=False,
                 weights=None, rng=None, dtype=np.float32):
        self.d = check_int(d, "d", minimum=1)
        self.h = check_int(h, "h", minimum=1)
        self.r = check_int(r, "r", minimum=1, maximum=self.d, maximum_text=f"d = {self.d}")
        targets = tuple(lora_targets)
        bad = [t for t in targets if t not in TARGETS]
        if bad or len(set(targets)) != len(targets):
            raise ValueError(f"lora_targets must be distinct names from {TARGETS}, got "
                             f"{lora_targets!r}")
        self.targets = targets
        self.causal = check_flag(causal, "causal")
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if quantize is not None and (not isinstance(quantize, dict)
                                     or set(quantize) - {"mha", "ffn"}):
            raise ValueError(f"quantize must be None or a dict with keys 'mha' and/or 'ffn', "
                             f"got {quantize!r}")
        quantize = quantize or {}
        self.quantize = {k: _spec(quantize.get(k), f"quantize[{k!r}]") for k in ("mha", "ffn")}
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        w = self._weights(weights)
        kw = dict(alpha=alpha, dropout=dropout, init=init, use_rslora=use_rslora, rng=self.rng)
        self.modules, self.qkv, self._qkv = {}, {}, {}
        for p in ("q", "k", "v"):
            self._qkv[p] = _Heads(w[p], self.quantize["mha"], self.dtype)
            self.qkv[p] = self._qkv[p].tensor
            for i in range(self.h):
                if p in self.targets:
                    self.modules[f"heads.{i}.{p}"] = LoRAAdapter(
                        self.d, self.d, self.r, dtype=self.dtype, **kw)
        self.modules["out"] = self._module(w["o"], "o", "mha", kw)
        self.modules["ffn"] = self._module(w["f"], "f", "ffn", kw)
        self.training = True
        self._cache = None

    # ---------------------------------------------------------------- construction
    def _weights(self, weights):
        d, h = self.d, self.h
        shapes = {"q": (h, d, d), "k": (h, d, d), "v": (h, d, d), "o": (h * d, d), "f": (d, d)}
        if weights is None:
            g = self.rng
            return {k: g.uniform(-1, 1, s) / math.sqrt(s[-2]) for k, s in shapes.items()}
        if not isinstance(weights, dict) or set(weights) != set(shapes):
            raise ValueError(f"weights must be a dict with the keys {sorted(shapes)}, got "
                             f"{sorted(weights) if isinstance(weights, dict) else weights!r}")
        out = {}
        for k, s in shapes.items():
            a = as_float_array(weights[k], f"weights[{k!r}]")
            if a.shape != s:
                raise ValueError(f"weights[{k!r}] must have shape {s}, got {a.shape}")
            check_finite(a, f"weights[{k!r}]")
            out[k] = a
        return out

    def _module(self, w, target, stage, kw):
        spec = self.quantize[stage]
        term = "out_proj" if target == "o" else "base"
        if target not in self.targets:
            return _Frozen(w, spec, self.dtype, term)
        if spec is None:
            m = LoRALinear(np.asarray(w, self.dtype), self.r, **kw)
        else:
            m = QLoRALinear(w, self.r, **spec, dtype=self.dtype, **kw)
        m.base_term = term
        return m

    # ---------------------------------------------------------------- parameters
    def lora_layers(self) -> dict:
        """{module name: LoRAAdapter, LoRALinear or QLoRALinear} of the adapted projections."""
        return {n: m for n, m in self.modules.items() if not isinstance(m, _Frozen)}

    def frozen_weight(self, name: str, dtype=None) -> np.ndarray:
        """The frozen weight of module ``name`` ("heads.{i}.{q,k,v}", "out", "ffn") as a new
        float array (dequantized when stored quantized), in ``dtype`` (the layer's)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "heads" and parts[2] in self.qkv \
                and parts[1].isdigit() and int(parts[1]) < self.h:
            return self._qkv[parts[2]].head(int(parts[1]), dtype)
        if name not in ("out", "ffn"):
            raise ValueError(f"name must be 'heads.<i>.<q|k|v>' with i < {self.h}, 'out' or "
                             f"'ffn', got {name!r}")
        m = self.modules[name]
        if getattr(m, "weight", None) is not None:
            return np.array(m.weight, dtype)
        return m.qweight.dequantize(dtype)

    @property
    def params(self) -> dict:
        """The trainable arrays (views of the adapters' own), e.g. "heads.0.q.A"."""
        return {f"{n}.{k}": v for n, m in self.lora_layers().items() for k, v in m.params.items()}

    @property
    def grads(self) -> dict:
        return {f"{n}.{k}": v for n, m in self.lora_layers().items() for k, v in m.grads.items()}

    def trainable_parameters(self) -> int:
        return sum(m.trainable_parameters() for m in self.lora_layers().values())

    def frozen_bytes(self, stage: str | None = None) -> int:
        """Bytes of the frozen weights ("mha", "ffn" or both)."""
        mha = sum(f.frozen_bytes() for f in self._qkv.values()) + \
            self.modules["out"].frozen_bytes()
        ffn = self.modules["ffn"].frozen_bytes()
        return {"mha": mha, "ffn": ffn, None: mha + ffn}[stage]

    def train(self, mode: bool = True):
        self.training = bool(mode)
        for m in self.lora_layers().values():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # ---------------------------------------------------------------- compute
    def _entries(self, g):
        """Score entries the attention needs: per group n·n, or n(n+1)/2 kept ones when causal."""
        groups, n = g.shape[1], g.shape[2]
        return groups * (n * (n + 1) // 2 if self.causal else n * n)

    def _fwd(self, name, x2, backend):
        m = self.modules[name]
        if isinstance(m, _Frozen):
            return m.fwd(x2, backend)
        return m._fwd_rows(x2, backend)

    def _bwd(self, name, dy2, backend):
        m = self.modules[name]
        if isinstance(m, _Frozen):
            return m.dx(dy2, backend)
        return m._bwd_rows(dy2, True, backend)

    def forward(self, H, *, stage: str = "layer", backend: str | None = None) -> np.ndarray:
        """H' (n, d) or (batch, n, d) for H of that shape; ``stage`` "mha" or "ffn" runs
        that map alone (MHA(H) or LFFN(H)), "layer" both."""
        if stage not in ("layer", "mha", "ffn"):
            raise ValueError(f"stage must be 'layer', 'mha' or 'ffn', got {stage!r}")
        x = as_float_array(H, "H")
        if x.ndim not in (2, 3) or x.shape[-1] != self.d or 0 in x.shape:
            raise ValueError(f"H must have shape (n, {self.d}) or (batch, n, {self.d}) with "
                             f"n >= 1, got {x.shape}")
        check_finite(x, "H")
        Bt, n = (1,) + x.shape[:1] if x.ndim == 2 else x.shape[:2]
        d, h = self.d, self.h
        y = np.array(x.reshape(Bt * n, d), self.dtype, order="C", copy=True)
        g = prob = None
        if stage != "ffn":
            qkv = np.empty((3, h, Bt * n, d), self.dtype)
            for j, p in enumerate("qkv"):
                base = self._qkv[p].fwd(y, backend)                  # (rows, h·d), every head
                for i in range(h):
                    name = f"heads.{i}.{p}"
                    if name in self.modules:
                        base[:, i * d:(i + 1) * d] += self.modules[name]._fwd_rows(y, backend)
                qkv[j] = base.reshape(Bt * n, h, d).transpose(1, 0, 2)
            g = qkv.reshape(3, h * Bt, n, d)                   # groups (head, batch)
            o, prob = _ops.attention_fwd(g[0], g[1], g[2], 1.0 / math.sqrt(d), self.causal,
                                         backend=backend)
            e = self._entries(g)
            count("forward", scores=e * d, score_scale=e, softmax_exps=e, pv=e * d)
            concat = np.ascontiguousarray(o.reshape(h, Bt * n, d).transpose(1, 0, 2))
            y = self._fwd("out", concat.reshape(Bt * n, h * d), backend)
        if stage != "mha":
            y = self._fwd("ffn", y, backend)
        self._cache = (stage, g, prob, x.shape, backend)
        return y.reshape(x.shape)

    __call__ = forward

    def backward(self, dH, *, backend: str | None = None) -> np.ndarray:
        """Fill ``grads`` from dL/dH' of the last forward; returns dL/dH (the adapters of
        a stage the forward did not run keep their previous gradients)."""
        if self._cache is None:
            raise ValueError("backward needs a forward first (each forward allows one backward)")
        stage, g, prob, shape, fb = self._cache
        backend = backend or fb
        dy = as_float_array(dH, "dH")
        if dy.shape != shape:
            raise ValueError(f"dH must have shape {shape} (the forward's output), got {dy.shape}")
        d, h = self.d, self.h
        rows = int(np.prod(shape[:-1]))
        dx = np.array(dy.reshape(rows, d), self.dtype, order="C", copy=True)
        if stage != "mha":
            dx = self._bwd("ffn", dx, backend)
        if stage != "ffn":
            Bt, n = g.shape[1] // h, g.shape[2]
            dc = self._bwd("out", dx, backend)
            do = np.ascontiguousarray(dc.reshape(Bt * n, h, d).transpose(1, 0, 2)).reshape(
                h * Bt, n, d)
            dq, dk, dv = _ops.attention_bwd(do, g[0], g[1], g[2], prob, 1.0 / math.sqrt(d),
                                            backend=backend)
            e = self._entries(g)
            count("backward", dv=e * d, dp=e * d, softmax=e, score_scale=e, dq=e * d, dk=e * d)
            dx = None
            for p, dg in zip("qkv", (dq, dk, dv)):
                dg = dg.reshape(h, Bt * n, d)
                dcat = np.ascontiguousarray(dg.transpose(1, 0, 2)).reshape(Bt * n, h * d)
                part = self._qkv[p].dx(dcat, backend)              # Σ_i dQ_i W_iᵀ in one GEMM
                if dx is None:
                    dx = part
                else:
                    dx += part
                for i in range(h):
                    name = f"heads.{i}.{p}"
                    if name in self.modules:
                        dx += self.modules[name]._bwd_rows(dg[i], True, backend)
        self._cache = None
        return dx.reshape(shape)
