"""Low-rank adapters (LoRA) over frozen float weights, and QLoRA over quantized ones.

A layer keeps its weight W (d_in, d_out) frozen (``y = x W``, the NumPy
orientation; torch's ``Linear.weight`` is Wᵀ) and trains A (d_in, r) and
B (d_out, r)::

    y = x W + bias + s · dropout(x) A Bᵀ,    s = alpha / r  (rsLoRA: alpha / √r)

computing ``x A`` first, so the (d_in, d_out) product A Bᵀ is never formed.
PEFT's initialization: A kaiming-uniform (a = √5, i.e. uniform in ±1/√d_in),
B zero, so a new layer's output is exactly x W (+ bias).  In PEFT's files,
``lora_A.weight`` is Aᵀ (r, d_in) and ``lora_B.weight`` is B (d_out, r).

``params`` ({"A": A, "B": B}) are the trainable arrays, updated in place by an
optimizer (``fastdl.optim``); ``backward(dy)`` OVERWRITES ``grads`` (same
keys) and returns dx.  ``QLoRALinear`` stores W quantized (fastdl.quant) and
runs the base product through ``qmatmul``: dequantization costs O(d_in·d_out)
against the O(n·d_in·d_out) of the product.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import numpy as np

from fastdl import ops as _ops
from fastdl._validate import as_float_array, check_choice, check_finite, check_int, check_real
from fastdl.quant import QuantizedTensor, dequantize, qmatmul, quantize

__all__ = ["LoRALinear", "QLoRALinear", "LoRAAdapter", "lora_scale", "count_ops",
           "TransformerLayer", "save_adapter", "load_adapter"]

_INITS = ("kaiming", "gaussian", False)


def lora_scale(r: int, alpha=None, use_rslora: bool = False) -> float:
    """s = alpha / r (``use_rslora``: alpha / √r); alpha None means alpha = r (s = 1,
    rsLoRA √r)."""
    r = check_int(r, "r", minimum=1)
    a = float(r) if alpha is None else check_real(alpha, "alpha")
    if alpha is not None and a <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    return a / math.sqrt(r) if use_rslora else a / r


_COUNTERS: list = []


@contextmanager
def count_ops():
    """Count the operations the LoRA layers ask of the kernels while the block runs,
    from the shapes of every call: yields {"forward": {term: count}, "backward": {…},
    "dequantized": {"forward": weights, "backward": weights}}.  Terms as in
    ``fastdl.complexity.LoRAForwardCounts`` / ``LoRABackwardCounts`` (multiply-adds of
    each product; scale multiplies; softmax exps)."""
    c = {"forward": {}, "backward": {}, "dequantized": {"forward": 0, "backward": 0}}
    _COUNTERS.append(c)
    try:
        yield c
    finally:
        _COUNTERS.remove(c)


def count(part: str, **terms) -> None:
    """Add ``terms`` to every active counter's ``part`` (no-op when none is active)."""
    for c in _COUNTERS:
        d = c[part]
        for k, v in terms.items():
            d[k] = d.get(k, 0) + int(v)


def _dtype_of(w: np.ndarray) -> np.dtype:
    return np.dtype(np.float64 if w.dtype == np.float64 else np.float32)


def _frozen(a, name, dtype, shape=None) -> np.ndarray:
    arr = as_float_array(a, name)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    check_finite(arr, name)
    out = np.array(arr, dtype=dtype, order="C", copy=True)
    out.setflags(write=False)
    return out


class _Adapter:
    """What LoRA and QLoRA layers share: the adapter, dropout, train/eval, backward."""

    base_term = "base"          # the name count_ops() gives x W (the transformer's W^O: out_proj)

    def _init_adapter(self, d_in, d_out, dtype, r, alpha, dropout, init, use_rslora, bias,
                      rng):
        if isinstance(r, bool) or not isinstance(r, numbers.Integral):
            raise TypeError(f"r must be an int, got {r!r} ({type(r).__name__})")
        lim = min(d_in, d_out)
        if not 1 <= r <= lim:
            raise ValueError(f"r must be in [1, min(d_in, d_out) = {lim}] for a weight of shape "
                             f"{(d_in, d_out)}, got {r}")
        if init is True:
            init = "kaiming"                    # PEFT's init_lora_weights=True
        check_choice(init, "init", _INITS)
        self.d_in, self.d_out, self.dtype, self.r = d_in, d_out, dtype, int(r)
        self.use_rslora = bool(use_rslora)
        self.alpha = float(r) if alpha is None else check_real(alpha, "alpha")
        self.scale = lora_scale(r, alpha, self.use_rslora)
        self.dropout = check_real(dropout, "dropout", low=0.0, high=1.0)
        if self.dropout >= 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.bias = None if bias is None else _frozen(bias, "bias", dtype, (d_out,))
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        g = self.rng
        A = g.uniform(-1, 1, (d_in, r)) / math.sqrt(d_in)       # kaiming-uniform, a = √5
        if init == "gaussian":
            A = g.normal(0.0, 1.0 / r, (d_in, r))
        B = np.zeros((d_out, r)) if init else g.uniform(-1, 1, (d_out, r)) / math.sqrt(r)
        self.params = {"A": np.ascontiguousarray(A, dtype), "B": np.ascontiguousarray(B, dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.training = True
        self.merged = False
        self._cache = None

    # ---------------------------------------------------------------- parameters
    @property
    def A(self) -> np.ndarray:
        return self.params["A"]

    @property
    def B(self) -> np.ndarray:
        return self.params["B"]

    def _checked_params(self):
        for k, shape in (("A", (self.d_in, self.r)), ("B", (self.d_out, self.r))):
            v = self.params.get(k)
            if not isinstance(v, np.ndarray) or v.shape != shape or v.dtype != self.dtype:
                got = v if not isinstance(v, np.ndarray) else f"{v.dtype} array of shape {v.shape}"
                raise ValueError(f"params[{k!r}] must be a {self.dtype} array of shape {shape}, "
                                 f"got {got}")
        return self.params["A"], self.params["B"]

    def trainable_parameters(self) -> int:
        """r·(d_in + d_out): the entries of A and B."""
        return self.r * (self.d_in + self.d_out)

    def delta_weight(self) -> np.ndarray:
        """s · A Bᵀ (d_in, d_out): what merging adds to the weight."""
        A, B = self._checked_params()
        return (A * self.dtype.type(self.scale)) @ B.T

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ---------------------------------------------------------------- compute
    def _rows(self, x, name, width):
        arr = as_float_array(x, name)
        if arr.ndim == 0 or arr.shape[-1] != width:
            raise ValueError(f"{name} must have shape (..., {width}), got {arr.shape}")
        lead = arr.shape[:-1]
        n = int(np.prod(lead, dtype=np.int64))
        # a copy: the backward must not see later in-place changes of the caller's array
        return np.array(arr.reshape(n, width), dtype=self.dtype, order="C", copy=True), lead

    def _mask(self, n):
        if not self.training or self.dropout == 0.0:
            return None
        p = self.dropout
        keep = self.rng.random((n, self.d_in), dtype=np.float64) >= p
        return (keep * (1.0 / (1.0 - p))).astype(self.dtype)

    def _fwd_rows(self, x2, backend):
        """y (N, d_out) of private C-contiguous rows x2 (N, d_in), N >= 1, kept by reference."""
        A, B = self._checked_params()
        if self.merged:
            y = self._base(x2, backend)
            if self.bias is not None:
                y += self.bias
            self._cache = None
            return y
        mask = self._mask(x2.shape[0])
        y, xa = self._forward(x2, A, B, mask, backend)
        self._cache = (x2, xa, mask, backend)
        if _COUNTERS:
            n, (i, o), r = x2.shape[0], (self.d_in, self.d_out), self.r
            base = {self.base_term: n * i * o} if self.base_term else {}
            count("forward", **base, adapter=n * i * r + n * r * o, scale=n * r)
        return y

    def _bwd_rows(self, dy2, need_dx, backend):
        if self._cache is None:
            why = "the layer is merged (unmerge() to train)" if self.merged else \
                "forward() has not run since the last backward, or had no rows"
            raise ValueError(f"backward needs the forward's inputs: {why}")
        x2, xa, mask, fwd_backend = self._cache
        if dy2.shape != (x2.shape[0], self.d_out):
            raise ValueError(f"dy must have {x2.shape[0]} rows of {self.d_out} (the forward's "
                             f"output), got shape {dy2.shape}")
        A, B = self._checked_params()
        da, db, dx = self._backward(dy2, x2, xa, A, B, mask, bool(need_dx),
                                    backend or fwd_backend)
        if _COUNTERS:
            n, (i, o), r = x2.shape[0], (self.d_in, self.d_out), self.r
            base = {self.base_term + "_dx": n * o * i if need_dx else 0} if self.base_term else {}
            count("backward", **base,
                  adapter=n * o * r + i * n * r + o * n * r, adapter_dx=n * r * i if need_dx else 0,
                  scale=n * r + o * r)
        self.grads = {"A": da, "B": db}
        self._cache = None
        return dx

    def forward(self, x, *, backend: str | None = None) -> np.ndarray:
        """y (*, d_out) for x (*, d_in); keeps what ``backward`` needs."""
        x2, lead = self._rows(x, "x", self.d_in)
        check_finite(x2, "x")
        self._lead = lead
        if x2.shape[0] == 0:
            self._checked_params()
            self._cache = None
            return np.zeros(lead + (self.d_out,), self.dtype)
        return self._fwd_rows(x2, backend).reshape(lead + (self.d_out,))

    __call__ = forward

    def backward(self, dy, *, need_dx: bool = True, backend: str | None = None):
        """Fill ``grads`` ("A", "B") from dy = dL/dy (*, d_out) of the last forward;
        returns dx (*, d_in), or None with ``need_dx=False``."""
        if not isinstance(need_dx, (bool, np.bool_)):
            raise TypeError(f"need_dx must be a bool, got {need_dx!r}")
        dy2, dlead = self._rows(dy, "dy", self.d_out)
        lead = getattr(self, "_lead", None)
        if self._cache is not None and dlead != lead:
            raise ValueError(f"dy must have shape {lead + (self.d_out,)} (the forward's output), "
                             f"got {dlead + (self.d_out,)}")
        dx = self._bwd_rows(dy2, need_dx, backend)
        return None if dx is None else dx.reshape(lead + (self.d_in,))

    def loss_and_grads(self, x, target):
        """Squared error L = Σ (y − target)² with the adapter gradients (no dx)."""
        y = self.forward(x)
        t = as_float_array(target, "target")
        if t.shape != y.shape:
            raise ValueError(f"target must have shape {y.shape}, got {t.shape}")
        diff = y - t
        self.backward(2 * diff, need_dx=False)
        return float(np.vdot(diff, diff)), self.grads


class LoRALinear(_Adapter):
    """y = x W + bias + s · dropout(x) A Bᵀ over a frozen float weight W (d_in, d_out).

    ``alpha``: None means alpha = r (s = 1); ``init``: "kaiming" (PEFT's default,
    also True), "gaussian" (A normal with std 1/r) or False (A and B both random,
    as torch's Linear initializes them); ``rng``: a seed or Generator for the
    initialization and the dropout masks.  The dtype is W's (float32 or float64;
    other inputs are converted).  ``merge()`` folds s·A Bᵀ into the weight the
    forward uses; ``unmerge()`` restores the original weight exactly (it is kept).
    """

    def __init__(self, weight, r, *, alpha=None, dropout=0.0, init="kaiming",
                 use_rslora=False, bias=None, rng=None):
        w = as_float_array(weight, "weight")
        if w.ndim != 2 or 0 in w.shape:
            raise ValueError(f"weight must be a non-empty 2-D (d_in, d_out) array, got shape "
                             f"{w.shape}")
        dtype = _dtype_of(w)
        self.weight = _frozen(w, "weight", dtype)
        self._init_adapter(*w.shape, dtype, r, alpha, dropout, init, use_rslora, bias, rng)
        self._merged_w = None

    def _base(self, x2, backend):
        return x2 @ self._merged_w

    def frozen_bytes(self) -> int:
        """Bytes of the frozen float weight."""
        return self.weight.nbytes

    def _forward(self, x2, A, B, mask, backend):
        return _ops.lora_fwd(x2, self.weight, A, B, self.bias, mask, self.scale, backend=backend)

    def _backward(self, dy2, x2, xa, A, B, mask, need_dx, backend):
        return _ops.lora_bwd(dy2, x2, xa, self.weight, A, B, mask, self.scale, need_dx,
                             backend=backend)

    def merged_weight(self) -> np.ndarray:
        """W + s·A Bᵀ (a new array)."""
        return self.weight + self.delta_weight()

    def merge(self):
        """Run the forward on W + s·A Bᵀ (no adapter term); backward needs unmerge()."""
        if not self.merged:
            self._merged_w = self.merged_weight()
            self.merged = True
        return self

    def unmerge(self):
        """Back to W (kept unchanged, so exactly restored) plus the adapter."""
        self._merged_w, self.merged = None, False
        return self

    def __repr__(self):
        return (f"LoRALinear(d_in={self.d_in}, d_out={self.d_out}, r={self.r}, "
                f"alpha={self.alpha:g}, scale={self.scale:g}, dtype={self.dtype})")


class QLoRALinear(_Adapter):
    """LoRA over a quantized frozen weight: y = x dequant(W̃) + bias + s·dropout(x) A Bᵀ.

    ``weight``: a float (d_in, d_out) array, quantized here with ``bits``,
    ``scheme``, ``block_size``, ``double_quant`` (QLoRA's NF4 with blocks of 64
    and double quantization by default), or a ``QuantizedTensor`` used as is.  The
    base product runs through ``qmatmul`` (dx through ``qmatmul(transpose=True)``)
    without forming the float weight; compute is float32 (``dtype=np.float64``
    for float64 adapters and activations).  ``merged_weight()`` is
    dequantize(W̃) + s·A Bᵀ, the float weight the adapter was trained against;
    ``requantize()`` quantizes it in the same format.
    """

    def __init__(self, weight, r, *, bits=4, scheme="nf4", block_size=64, double_quant=True,
                 alpha=None, dropout=0.0, init="kaiming", use_rslora=False, bias=None, rng=None,
                 dtype=np.float32):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        if isinstance(weight, QuantizedTensor):
            q = weight
        else:
            w = as_float_array(weight, "weight")
            if w.ndim != 2 or 0 in w.shape:
                raise ValueError(f"weight must be a non-empty 2-D (d_in, d_out) array or a "
                                 f"QuantizedTensor, got shape {w.shape}")
            check_finite(w, "weight")
            q = quantize(w, bits, scheme=scheme, block_size=block_size,
                         double_quant=double_quant)
        self.qweight = q
        self._init_adapter(*q.shape, dtype, r, alpha, dropout, init, use_rslora, bias, rng)
        self._unmerged_q = None

    def _base(self, x2, backend):
        count("dequantized", forward=self.d_in * self.d_out)
        return qmatmul(x2, self.qweight, backend=backend)

    def _forward(self, x2, A, B, mask, backend):
        y, xa = _ops.lora_fwd(x2, None, A, B, self.bias, mask, self.scale, backend=backend)
        y += self._base(x2, backend)
        return y, xa

    def _backward(self, dy2, x2, xa, A, B, mask, need_dx, backend):
        da, db, dx = _ops.lora_bwd(dy2, x2, xa, None, A, B, mask, self.scale, need_dx,
                                   backend=backend)
        if dx is not None:
            count("dequantized", backward=self.d_in * self.d_out)
            dx += qmatmul(dy2, self.qweight, transpose=True, backend=backend)
        return da, db, dx

    def merged_weight(self) -> np.ndarray:
        """dequantize(W̃) + s·A Bᵀ in the layer's dtype (a new array)."""
        return dequantize(self.qweight, self.dtype) + self.delta_weight()

    def requantize(self):
        """(new QuantizedTensor of ``merged_weight()`` in the same format, the rounding
        error it adds: dequantize(new) − merged_weight(), a float array)."""
        q = self.qweight
        merged = self.merged_weight()
        new = quantize(merged, q.bits, scheme=q.scheme, block_size=q.block_size,
                       rounding=q.rounding, double_quant=q.double_quant)
        return new, dequantize(new, self.dtype) - merged

    def merge(self):
        """Requantize W̃ + s·A Bᵀ and run the forward on it (adds the rounding error
        ``requantize`` reports); ``unmerge()`` restores the original W̃ exactly."""
        if not self.merged:
            self._unmerged_q = self.qweight
            self.qweight = self.requantize()[0]
            self.merged = True
        return self

    def unmerge(self):
        if self.merged:
            self.qweight, self._unmerged_q, self.merged = self._unmerged_q, None, False
        return self

    def frozen_bytes(self) -> int:
        """Bytes of the quantized frozen weight (data and scales)."""
        return self.qweight.nbytes

    def __repr__(self):
        q = self.qweight
        return (f"QLoRALinear(d_in={self.d_in}, d_out={self.d_out}, r={self.r}, "
                f"scale={self.scale:g}, weight={q.scheme} {q.bits}-bit, dtype={self.dtype})")


class LoRAAdapter(_Adapter):
    """The adapter alone, y = bias + s · dropout(x) A Bᵀ, for a frozen product computed
    elsewhere (the transformer layer runs every head's frozen product as one GEMM and
    adds each head's adapter to its columns).  Same arguments, ``params``, ``grads``,
    ``forward`` / ``backward`` (dx: the adapter's share only) as ``LoRALinear``."""

    base_term = None            # count_ops(): no frozen product here

    def __init__(self, d_in, d_out, r, *, alpha=None, dropout=0.0, init="kaiming",
                 use_rslora=False, bias=None, rng=None, dtype=np.float32):
        d_in, d_out = check_int(d_in, "d_in", minimum=1), check_int(d_out, "d_out", minimum=1)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self._init_adapter(d_in, d_out, dtype, r, alpha, dropout, init, use_rslora, bias, rng)

    def _base(self, x2, backend):
        return np.zeros((x2.shape[0], self.d_out), self.dtype)

    def _forward(self, x2, A, B, mask, backend):
        return _ops.lora_fwd(x2, None, A, B, self.bias, mask, self.scale, backend=backend)

    def _backward(self, dy2, x2, xa, A, B, mask, need_dx, backend):
        return _ops.lora_bwd(dy2, x2, xa, None, A, B, mask, self.scale, need_dx,
                             backend=backend)

    def frozen_bytes(self) -> int:
        return 0

    def __repr__(self):
        return (f"LoRAAdapter(d_in={self.d_in}, d_out={self.d_out}, r={self.r}, "
                f"scale={self.scale:g}, dtype={self.dtype})")


def __getattr__(name):
    # the transformer layer and the adapter files build on the classes above
    if name == "TransformerLayer":
        from fastdl.lora_transformer import TransformerLayer
        return TransformerLayer
    if name in ("save_adapter", "load_adapter"):
        from fastdl import lora_io
        return getattr(lora_io, name)
    raise AttributeError(f"module 'fastdl.lora' has no attribute {name!r}")
