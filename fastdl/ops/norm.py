"""The normalization ops.

``x`` and ``dy`` are C-contiguous float16/float32/float64; weights and biases
1-D arrays of the compute dtype (float32 for float16 data, else the data's) or
None, and dw/db come back in that dtype; statistics are float64 (except
norm_stats', which have x's dtype).  ``out`` is the caller's output array of
x's dtype and shape, or None: the backend allocates it.  Forwards return the
output first.  float16 data keep float16 outputs and input gradients and are
computed in float32, as torch does.  Variances are biased; the forwards
normalize with ``rstd = 1 / sqrt(var + eps)`` computed in float64.
"""
from __future__ import annotations

import numpy as np

from fastdl.ops._spec import Arg, OpSpec, Result, define

NORM_KINDS = ("batch", "layer", "instance", "group")

_ASSUME = ("arrays C-contiguous and aligned, x non-empty, shapes as declared, dy of x's dtype, "
           "weights and statistics converted; out (when given) exact and not overlapping")


def _x(shape):
    return Arg("x", dtype="float", shape=shape, nonempty=True)


def _dy(shape):
    return Arg("dy", dtype="like:x", shape=shape, convert=True)


def _param(name, dim):
    return Arg(name, dtype="compute:x", shape=(dim,), optional=True, convert=True)


def _stat(name, *dims):
    return Arg(name, dtype="float64", shape=dims, convert=True, reshape=True)


def _out(shape):
    return Arg("out", dtype="like:x", shape=shape, optional=True, out=True)


_EPS = Arg("eps", kind="real")
_G = Arg("G", kind="int", low=1, divides="C")


def _flags(*names):
    return tuple(Arg(n, kind="flag") for n in names)


def _grads(dim, db=True):
    res = (Result("dx", "like:x", "x"), Result("dw", "compute:x", (dim,), optional=True))
    return res + ((Result("db", "compute:x", (dim,), optional=True),) if db else ())


# ------------------------------------------------------------- samplers (conformance suite)

def _shape(rng, ndim, tiny):
    # small sizes with 1s, odd sizes and sizes past a SIMD width; tiny: one element
    return (1,) * ndim if tiny else tuple(int(rng.choice([1, 2, 3, 5, 8, 17, 33]))
                                          for _ in range(ndim))


def _data(rng, shape, dtype):
    return (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)


def _opt(rng, shape, dtype):
    return _data(rng, shape, dtype) if rng.random() < 0.7 else None


def _cd(dtype):
    return np.float32 if np.dtype(dtype) == np.float16 else dtype


def _stats(rng, n):
    return rng.standard_normal(n) * 0.1, rng.uniform(0.5, 2.0, n)


def _divisor(rng, c):
    return int(rng.choice([g for g in range(1, c + 1) if c % g == 0]))


def _s_norm_stats(rng, dtype, tiny=False):
    shape = _shape(rng, int(rng.integers(2, 5)), tiny)
    kind = str(rng.choice(NORM_KINDS))
    ddof = int(rng.integers(0, 2)) if min(shape) > 1 else 0   # ddof below every count
    return (_data(rng, shape, dtype), kind,
            _divisor(rng, shape[1]) if kind == "group" else None, ddof)


def _s_layer_fwd(rng, dtype, tiny=False):
    R, D = _shape(rng, 2, tiny)
    return (_data(rng, (R, D), dtype), _opt(rng, (D,), _cd(dtype)), _opt(rng, (D,), _cd(dtype)),
            1e-5, None)


def _s_layer_bwd(rng, dtype, tiny=False):
    R, D = _shape(rng, 2, tiny)
    m, r = _stats(rng, R)
    return (_data(rng, (R, D), dtype), _data(rng, (R, D), dtype), m, r,
            _opt(rng, (D,), _cd(dtype)), bool(rng.random() < 0.5), bool(rng.random() < 0.5))


def _s_rms_fwd(rng, dtype, tiny=False):
    R, D = _shape(rng, 2, tiny)
    return _data(rng, (R, D), dtype), _opt(rng, (D,), _cd(dtype)), 1e-5, None


def _s_rms_bwd(rng, dtype, tiny=False):
    R, D = _shape(rng, 2, tiny)
    return (_data(rng, (R, D), dtype), _data(rng, (R, D), dtype), _stats(rng, R)[1],
            _opt(rng, (D,), _cd(dtype)), bool(rng.random() < 0.5))


def _s_group_fwd(rng, dtype, tiny=False):
    N, C, S = _shape(rng, 3, tiny)
    return (_data(rng, (N, C, S), dtype), _divisor(rng, C), _opt(rng, (C,), _cd(dtype)),
            _opt(rng, (C,), _cd(dtype)), 1e-5, None)


def _s_group_bwd(rng, dtype, tiny=False):
    N, C, S = _shape(rng, 3, tiny)
    G = _divisor(rng, C)
    m, r = _stats(rng, N * G)
    return (_data(rng, (N, C, S), dtype), _data(rng, (N, C, S), dtype), m, r, G,
            _opt(rng, (C,), _cd(dtype)), bool(rng.random() < 0.5), bool(rng.random() < 0.5))


def _s_batch_fwd(rng, dtype, tiny=False):
    N, C, S = _shape(rng, 3, tiny)
    N = max(N, 2)        # one value per channel is rejected above the op (no tiny case)
    return (_data(rng, (N, C, S), dtype), _opt(rng, (C,), _cd(dtype)),
            _opt(rng, (C,), _cd(dtype)), 1e-5, None)


def _s_batch_eval(rng, dtype, tiny=False):
    N, C, S = _shape(rng, 3, tiny)
    m, r = _stats(rng, C)
    return (_data(rng, (N, C, S), dtype), m, r, _opt(rng, (C,), _cd(dtype)),
            _opt(rng, (C,), _cd(dtype)), None)


def _s_batch_bwd(rng, dtype, tiny=False):
    N, C, S = _shape(rng, 3, tiny)
    m, r = _stats(rng, C)
    return (_data(rng, (N, C, S), dtype), _data(rng, (N, C, S), dtype), m, r,
            _opt(rng, (C,), _cd(dtype)), bool(rng.random() < 0.5), bool(rng.random() < 0.5),
            bool(rng.random() < 0.5))


# ------------------------------------------------------------- the specs

def _norm_stats_rule(values, dims):
    kind, G = values["kind"], values["num_groups"]
    if kind == "group":
        if G is None:
            raise TypeError("num_groups must be an int for kind='group', got None")
        if G < 1 or dims["C"] % G:
            raise ValueError(f"num_groups must be >= 1 and divide C={dims['C']}, got {G}")
    elif G is not None:
        raise ValueError(f"num_groups must be None for kind={kind!r}, got {G!r}")


norm_stats = define(OpSpec(
    "norm_stats", area="norm",
    args=(_x(("N", "C", "...")), Arg("kind", kind="choice", choices=NORM_KINDS),
          Arg("num_groups", kind="int", optional=True), Arg("ddof", kind="int", low=0)),
    results=(Result("mean", "like:x"), Result("var", "like:x")),
    doc="mean and variance over the axes of kind (batch: (C,); layer: (N,); instance: (N, C); "
        "group: (N, num_groups))",
    assume=_ASSUME, rule=_norm_stats_rule, sample=_s_norm_stats))

layer_norm_fwd = define(OpSpec(
    "layer_norm_fwd", area="norm",
    args=(_x(("R", "D")), _param("w", "D"), _param("b", "D"), _EPS, _out(("R", "D"))),
    results=(Result("y", "like:x", "x"), Result("mean", "float64", ("R",)),
             Result("var", "float64", ("R",))),
    doc="each row normalized over its D values", assume=_ASSUME, sample=_s_layer_fwd))

layer_norm_bwd = define(OpSpec(
    "layer_norm_bwd", area="norm",
    args=(_dy(("R", "D")), _x(("R", "D")), _stat("mean", "R"), _stat("rstd", "R"),
          _param("w", "D")) + _flags("need_dw", "need_db"),
    results=_grads("D"), assume=_ASSUME, sample=_s_layer_bwd))

rms_norm_fwd = define(OpSpec(
    "rms_norm_fwd", area="norm",
    args=(_x(("R", "D")), _param("w", "D"), _EPS, _out(("R", "D"))),
    results=(Result("y", "like:x", "x"), Result("ms", "float64", ("R",))),
    doc="each row divided by its root mean square", assume=_ASSUME, sample=_s_rms_fwd))

rms_norm_bwd = define(OpSpec(
    "rms_norm_bwd", area="norm",
    args=(_dy(("R", "D")), _x(("R", "D")), _stat("rstd", "R"), _param("w", "D"),
          Arg("need_dw", kind="flag")),
    results=_grads("D", db=False), assume=_ASSUME, sample=_s_rms_bwd))

group_norm_fwd = define(OpSpec(
    "group_norm_fwd", area="norm",
    args=(_x(("N", "C", "S")), _G, _param("w", "C"), _param("b", "C"), _EPS,
          _out(("N", "C", "S"))),
    results=(Result("y", "like:x", "x"), Result("mean", "float64"),
             Result("var", "float64")),
    doc="each sample's G groups of C/G channels normalized (instance norm: G = C)",
    assume=_ASSUME, sample=_s_group_fwd))

group_norm_bwd = define(OpSpec(
    "group_norm_bwd", area="norm",
    args=(_dy(("N", "C", "S")), _x(("N", "C", "S")), _stat("mean", "N", "G"),
          _stat("rstd", "N", "G"), _G, _param("w", "C")) + _flags("need_dw", "need_db"),
    results=_grads("C"), assume=_ASSUME, sample=_s_group_bwd))

batch_norm_fwd = define(OpSpec(
    "batch_norm_fwd", area="norm",
    args=(_x(("N", "C", "S")), _param("w", "C"), _param("b", "C"), _EPS,
          _out(("N", "C", "S"))),
    results=(Result("y", "like:x", "x"), Result("mean", "float64", ("C",)),
             Result("var", "float64", ("C",))),
    doc="each channel normalized over the batch and spatial positions (training)",
    assume=_ASSUME, sample=_s_batch_fwd))

batch_norm_eval = define(OpSpec(
    "batch_norm_eval", area="norm",
    args=(_x(("N", "C", "S")), _stat("mean", "C"), _stat("rstd", "C"), _param("w", "C"),
          _param("b", "C"), _out(("N", "C", "S"))),
    results=(Result("y", "like:x", "x"),),
    doc="each channel normalized with given statistics (inference)",
    assume=_ASSUME, sample=_s_batch_eval))

batch_norm_bwd = define(OpSpec(
    "batch_norm_bwd", area="norm",
    args=(_dy(("N", "C", "S")), _x(("N", "C", "S")), _stat("mean", "C"), _stat("rstd", "C"),
          _param("w", "C")) + _flags("training", "need_dw", "need_db"),
    results=_grads("C"), assume=_ASSUME, sample=_s_batch_bwd))

NORM_OPS = (norm_stats, layer_norm_fwd, layer_norm_bwd, rms_norm_fwd, rms_norm_bwd,
            group_norm_fwd, group_norm_bwd, batch_norm_fwd, batch_norm_eval, batch_norm_bwd)
