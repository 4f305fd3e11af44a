"""The low-rank adapter and attention ops of the LoRA layers.

A LoRA linear map of rows ``x`` (N, I) with a frozen weight W (I, O), adapter
A (I, R), B (O, R), scale s and an optional dropout ``mask`` (N, I) (0 or
1/(1-p), applied to the adapter's input only)::

    xa = (x * mask) A                  (N, R), kept for the backward
    y  = x W + bias + s * xa Bᵀ        (x A first: A Bᵀ is never formed)

``w`` None leaves out the base term (a quantized base runs through qmatmul).
The backward, given dy = dL/dy (no gradient for the frozen W and bias)::

    g  = s * dy B                      (N, R)
    dB = s * dyᵀ xa,   dA = (x * mask)ᵀ g,   dx = dy Wᵀ + (g Aᵀ) * mask

Attention over G independent (batch, head) groups: q (G, N, D), k (G, M, D),
v (G, M, E)::

    p = softmax(scale * q kᵀ)  row-wise;  o = p v

``causal``: query i sees keys j <= i only (torch's ``is_causal``); masked
entries of p are exactly 0.  The backward takes p from the forward.
"""
from __future__ import annotations

import math

import numpy as np

from fastdl.ops._spec import Arg, OpSpec, Result, define

_ASSUME = "arrays C-contiguous and aligned, every array of x's dtype and the declared shape"


def _like(name, shape, optional=False, ref="x"):
    return Arg(name, dtype=f"like:{ref}", shape=shape, optional=optional)


def _finite_scale(values, dims):
    if not math.isfinite(values["scale"]):
        raise ValueError(f"scale must be finite, got {values['scale']!r}")


# ------------------------------------------------------------- samplers (conformance suite)

def _lora_dims(rng, tiny):
    if tiny:
        return 1, 1, 1, 1
    return tuple(int(rng.choice(c)) for c in
                 ([1, 2, 5, 17], [1, 3, 8, 33], [1, 4, 9, 32], [1, 2, 3, 8]))


def _lora_case(rng, dtype, tiny):
    N, I, O, R = _lora_dims(rng, tiny)

    def u(*shape):
        return rng.uniform(-1, 1, shape).astype(dtype)

    w = u(I, O) if rng.random() < 0.7 else None
    bias = u(O) if rng.random() < 0.5 else None
    p = float(rng.choice([0.0, 0.1, 0.5]))
    mask = None
    if p and rng.random() < 0.6:
        mask = ((rng.random((N, I)) >= p) / (1 - p)).astype(dtype)
    scale = float(rng.choice([0.5, 1.0, 2.0]))
    return u(N, I), w, u(I, R), u(O, R), bias, mask, scale


def _s_lora_fwd(rng, dtype, tiny=False):
    return _lora_case(rng, dtype, tiny)


def _s_lora_bwd(rng, dtype, tiny=False):
    x, w, a, b, _, mask, scale = _lora_case(rng, dtype, tiny)
    xa = (x if mask is None else x * mask) @ a
    dy = rng.standard_normal((x.shape[0], b.shape[0])).astype(dtype)
    return dy, x, xa, w, a, b, mask, scale, bool(rng.random() < 0.7)


def _att_dims(rng, tiny):
    if tiny:
        return 1, 1, 1, 1
    return tuple(int(rng.choice(c)) for c in ([1, 2, 3, 6], [1, 2, 7, 16, 33], [1, 3, 8, 16],
                                              [1, 4, 8]))


def _att_case(rng, dtype, tiny):
    G, N, D, E = _att_dims(rng, tiny)
    causal = bool(rng.random() < 0.5)
    M = N if causal else int(rng.choice([N, max(1, N - 1), N + 3]))
    q, k, v = (rng.standard_normal(s).astype(dtype) for s in ((G, N, D), (G, M, D), (G, M, E)))
    return q, k, v, float(1 / np.sqrt(D)), causal


def _s_att_fwd(rng, dtype, tiny=False):
    return _att_case(rng, dtype, tiny)


def _s_att_bwd(rng, dtype, tiny=False):
    from fastdl._backends.numpy.lora import attention_fwd
    q, k, v, scale, causal = _att_case(rng, dtype, tiny)
    _, p = attention_fwd(q, k, v, scale, causal)
    do = rng.standard_normal((q.shape[0], q.shape[1], v.shape[2])).astype(dtype)
    return do, q, k, v, p, scale


def _causal_rule(values, dims):
    _finite_scale(values, dims)
    if values["causal"] and dims["M"] != dims["N"]:
        raise ValueError(f"causal attention needs as many keys as queries, got N={dims['N']} "
                         f"queries and M={dims['M']} keys")


# ------------------------------------------------------------- the specs

_X = Arg("x", dtype="float32|float64", shape=("N", "I"), nonempty=True)
_ADAPTER = (_like("a", ("I", "R")), _like("b", ("O", "R")))

lora_fwd = define(OpSpec(
    "lora_fwd", area="lora",
    args=(_X, _like("w", ("I", "O"), True)) + _ADAPTER
    + (_like("bias", ("O",), True), _like("mask", ("N", "I"), True), Arg("scale", kind="real")),
    results=(Result("y", "like:x", ("N", "O")), Result("xa", "like:x", ("N", "R"))),
    doc="a LoRA linear map y = x W + bias + scale (x*mask) A Bᵀ and the adapter's (x*mask) A",
    assume=_ASSUME, rule=_finite_scale, sample=_s_lora_fwd))

lora_bwd = define(OpSpec(
    "lora_bwd", area="lora",
    args=(Arg("dy", dtype="like:x", shape=("N", "O")), _X, _like("xa", ("N", "R")),
          _like("w", ("I", "O"), True)) + _ADAPTER
    + (_like("mask", ("N", "I"), True), Arg("scale", kind="real"), Arg("need_dx", kind="flag")),
    results=(Result("da", "like:x", ("I", "R")), Result("db", "like:x", ("O", "R")),
             Result("dx", "like:x", ("N", "I"), optional=True)),
    doc="gradients of the adapter (A, B) and (need_dx) of x, given dy = dL/dy; without w the "
        "base term dy Wᵀ is left out of dx",
    assume=_ASSUME, rule=_finite_scale, sample=_s_lora_bwd))

_Q = Arg("q", dtype="float32|float64", shape=("G", "N", "D"), nonempty=True)
_KV = (Arg("k", dtype="like:q", shape=("G", "M", "D"), nonempty=True),
       Arg("v", dtype="like:q", shape=("G", "M", "E")))

attention_fwd = define(OpSpec(
    "attention_fwd", area="lora",
    args=(_Q,) + _KV + (Arg("scale", kind="real"), Arg("causal", kind="flag")),
    results=(Result("o", "like:q", ("G", "N", "E")), Result("p", "like:q", ("G", "N", "M"))),
    doc="softmax attention o = softmax(scale q kᵀ) v per group, and the probabilities p",
    assume=_ASSUME.replace("x's", "q's"), rule=_causal_rule, sample=_s_att_fwd))

attention_bwd = define(OpSpec(
    "attention_bwd", area="lora",
    args=(Arg("do", dtype="like:q", shape=("G", "N", "E")), _Q) + _KV
    + (Arg("p", dtype="like:q", shape=("G", "N", "M")), Arg("scale", kind="real")),
    results=(Result("dq", "like:q", ("G", "N", "D")), Result("dk", "like:q", ("G", "M", "D")),
             Result("dv", "like:q", ("G", "M", "E"))),
    doc="gradients of q, k and v given do = dL/do and the forward's probabilities p",
    assume=_ASSUME.replace("x's", "q's"), rule=_finite_scale, sample=_s_att_bwd))

LORA_OPS = (lora_fwd, lora_bwd, attention_fwd, attention_bwd)
