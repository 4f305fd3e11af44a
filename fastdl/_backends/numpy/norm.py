"""Reference normalization ops: float64 NumPy, written to be read.

Argument conventions are the op table in ``fastdl.norm``.  Every dtype,
float16 included, is computed on a float64 copy and rounded once to the
output's dtype; parameter gradients come back in the parameters' compute
dtype (float32 for float16 data).
"""
import numpy as np

from fastdl._validate import compute_dtype

f64 = np.float64


def _axes(ndim: int, kind: str):
    spatial = tuple(range(2, ndim))
    return {"batch": (0,) + spatial, "layer": (1,) + spatial, "instance": spatial}[kind]


def norm_stats(x, kind, num_groups, ddof):
    """(mean, var) per statistic group; arguments are validated by fastdl.norm_stats."""
    if kind == "group":
        x = x.reshape(x.shape[0], num_groups, -1)
        axes = (2,)
    else:
        axes = _axes(x.ndim, kind)
    mean = np.mean(x, axis=axes, dtype=np.float64)
    var = np.var(x, axis=axes, dtype=np.float64, ddof=ddof)
    return mean.astype(x.dtype), var.astype(x.dtype)


def _rstd(var, eps):
    return 1.0 / np.sqrt(var + eps)


def _affine(y, w, b, shape):
    if w is not None:
        y = y * w.astype(f64).reshape(shape)
    if b is not None:
        y = y + b.astype(f64).reshape(shape)
    return y


def _param_grads(dy, xhat, axes, need_dw, need_db, dtype):
    dtype = compute_dtype(dtype)
    dw = (dy * xhat).sum(axis=axes).astype(dtype) if need_dw else None
    db = dy.sum(axis=axes).astype(dtype) if need_db else None
    return dw, db


# ---- layer / RMS norm: x is (R, D), statistics per row

def _out(out, x):
    return np.empty_like(x) if out is None else out


def layer_norm_fwd(x, w, b, eps, out):
    xd = x.astype(f64)
    mean, var = xd.mean(axis=1), xd.var(axis=1)
    y = (xd - mean[:, None]) * _rstd(var, eps)[:, None]
    out = _out(out, x)
    out[...] = _affine(y, w, b, (1, -1))
    return out, mean, var


def layer_norm_bwd(dy, x, mean, rstd, w, need_dw, need_db):
    xd, dyd = x.astype(f64), dy.astype(f64)
    xhat = (xd - mean[:, None]) * rstd[:, None]
    g = dyd if w is None else dyd * w.astype(f64)
    dx = rstd[:, None] * (g - g.mean(axis=1, keepdims=True)
                          - xhat * (g * xhat).mean(axis=1, keepdims=True))
    return (dx.astype(x.dtype),) + _param_grads(dyd, xhat, 0, need_dw, need_db, x.dtype)


def rms_norm_fwd(x, w, eps, out):
    xd = x.astype(f64)
    ms = np.mean(xd * xd, axis=1)
    out = _out(out, x)
    out[...] = _affine(xd * _rstd(ms, eps)[:, None], w, None, (1, -1))
    return out, ms


def rms_norm_bwd(dy, x, rstd, w, need_dw):
    xd, dyd = x.astype(f64), dy.astype(f64)
    xhat = xd * rstd[:, None]
    g = dyd if w is None else dyd * w.astype(f64)
    dx = rstd[:, None] * (g - xhat * (g * xhat).mean(axis=1, keepdims=True))
    dw, _ = _param_grads(dyd, xhat, 0, need_dw, False, x.dtype)
    return dx.astype(x.dtype), dw


# ---- group / instance norm: x is (N, C, S), statistics per (n, group)

def group_norm_fwd(x, G, w, b, eps, out):
    N, C, S = x.shape
    xg = x.astype(f64).reshape(N, G, -1)
    mean, var = xg.mean(axis=2), xg.var(axis=2)
    y = ((xg - mean[..., None]) * _rstd(var, eps)[..., None]).reshape(N, C, S)
    out = _out(out, x)
    out[...] = _affine(y, w, b, (1, C, 1))
    return out, mean, var


def group_norm_bwd(dy, x, mean, rstd, G, w, need_dw, need_db):
    N, C, S = x.shape
    xg, dyd = x.astype(f64).reshape(N, G, -1), dy.astype(f64)
    xhat = ((xg - mean[..., None]) * rstd[..., None]).reshape(N, C, S)
    g = dyd if w is None else dyd * w.astype(f64)[None, :, None]
    gg, hg = g.reshape(N, G, -1), xhat.reshape(N, G, -1)
    dx = rstd[..., None] * (gg - gg.mean(axis=2, keepdims=True)
                            - hg * (gg * hg).mean(axis=2, keepdims=True))
    return ((dx.reshape(N, C, S).astype(x.dtype),)
            + _param_grads(dyd, xhat, (0, 2), need_dw, need_db, x.dtype))


# ---- batch norm: x is (N, C, S), statistics per channel

def batch_norm_fwd(x, w, b, eps, out):
    xd = x.astype(f64)
    mean, var = xd.mean(axis=(0, 2)), xd.var(axis=(0, 2))
    return batch_norm_eval(x, mean, _rstd(var, eps), w, b, out), mean, var


def batch_norm_eval(x, mean, rstd, w, b, out):
    y = (x.astype(f64) - mean[:, None]) * rstd[:, None]
    out = _out(out, x)
    out[...] = _affine(y, w, b, (1, -1, 1))
    return out


def batch_norm_bwd(dy, x, mean, rstd, w, training, need_dw, need_db):
    xd, dyd = x.astype(f64), dy.astype(f64)
    xhat = (xd - mean[:, None]) * rstd[:, None]
    g = dyd if w is None else dyd * w.astype(f64)[:, None]
    if training:
        dx = rstd[:, None] * (g - g.mean(axis=(0, 2), keepdims=True)
                              - xhat * (g * xhat).mean(axis=(0, 2), keepdims=True))
    else:
        dx = g * rstd[:, None]
    return (dx.astype(x.dtype),) + _param_grads(dyd, xhat, (0, 2), need_dw, need_db, x.dtype)
