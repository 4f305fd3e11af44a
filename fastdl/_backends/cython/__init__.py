"""The Cython backend: OpenMP + run-time-dispatched SIMD kernels.

Importing this package loads the compiled extensions; if they are missing the
registry lists the backend with the import error and falls back to NumPy.
Each op checks the shapes, dtypes and layout the kernels rely on before they
run without the GIL (the public API has already validated the user's input).
"""
import os
import warnings

import numpy as np

from fastdl._threads import get_num_threads
from fastdl._validate import check_flag, check_int, compute_dtype
from fastdl._backends.cython import _cpu, _decode, _norm, _norm16, _norm_stats, _quant
from fastdl.decode.ops import DECODE_OPS
from fastdl.norm import NORM_KINDS, NORM_OPS
from fastdl.quant import QUANT_OPS
from fastdl.registry import Backend

def _simd_from_env() -> None:
    """Apply FASTDL_SIMD; a value this machine cannot use warns and keeps the detected
    level (raising here would unload the whole backend and every op would fall back)."""
    raw = os.environ.get("FASTDL_SIMD")
    if not raw:
        return
    try:
        _cpu.set_simd_level(raw.strip().lower())
    except ValueError as exc:
        detected = _cpu.detected_simd()
        valid = [n for n, v in sorted(_cpu.LEVELS.items(), key=lambda kv: kv[1])
                 if v <= _cpu.LEVELS[detected]]
        warnings.warn(f"ignoring FASTDL_SIMD={raw!r}: {exc}; valid values here: "
                      f"{', '.join(map(repr, valid))}; using the detected level {detected!r}",
                      RuntimeWarning, stacklevel=2)


_simd_from_env()


def _adaptive_from_env() -> None:
    """FASTDL_ADAPTIVE_THREADS=0 keeps every op at its thread count whatever the load
    (for run-to-run identical BLAS results, or to measure oversubscription); 1 (the
    default) follows the CPUs other processes leave free."""
    raw = os.environ.get("FASTDL_ADAPTIVE_THREADS", "").strip().lower()
    if not raw:
        return
    if raw in ("0", "1"):
        _cpu.set_load_adaptive(raw == "1")
    else:
        warnings.warn(f"ignoring FASTDL_ADAPTIVE_THREADS={raw!r}: expected '0' or '1'",
                      RuntimeWarning, stacklevel=2)


_adaptive_from_env()

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# Dtypes the norm and decode kernels read: float16 data are converted inside the
# kernels and computed in float32 (_norm16, the *_f16 decode kernels); float32 and
# float64 run natively.
_F16 = np.dtype(np.float16)
_KERNEL_DTYPES = (_F16,) + _FLOATS


def _array(x, name):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"{name} must have dtype float16, float32 or float64, got {x.dtype}")
    # packed (strided/Fortran input: one copy) and aligned, as the kernels index it
    return np.require(x, requirements=("C", "A"))


def norm_stats(x, kind, num_groups, ddof):
    x = _array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, C, *spatial), got shape {x.shape}")
    if kind not in NORM_KINDS:
        raise ValueError(f"kind must be one of {NORM_KINDS}, got {kind!r}")
    if kind == "group":
        num_groups = _groups(num_groups, x.shape[1], "num_groups")
    elif num_groups is not None:
        raise ValueError(f"num_groups must be None for kind={kind!r}, got {num_groups!r}")
    ddof = check_int(ddof, "ddof", minimum=0)
    return _norm_stats.norm_stats(x, kind, num_groups, ddof, get_num_threads())


def _c(a, dtype, shape, name, required=False):
    """``a`` as a C-contiguous array of ``dtype`` and ``shape``; None passes for
    the optional ones (weight, bias)."""
    if a is None:
        if required:
            raise TypeError(f"{name} must be an array of shape {shape}, got None")
        return None
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return np.require(a, dtype, ("C", "A"))


def _data(x, ndim, name="x"):
    x = _array(x, name)
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape} (the public "
                         "functions handle empty inputs before dispatching)")
    return x


def _out(out, x, *inputs):
    if out is None:           # the kernel allocates
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
    if (out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous
            or not out.flags.writeable or not out.flags.aligned):
        raise ValueError(f"out must be a writeable, aligned, C-contiguous {x.dtype} array of "
                         f"shape {x.shape}, got {out.dtype} {out.shape}")
    for a in (x,) + inputs:
        if a is not None and np.may_share_memory(out, a):
            raise ValueError("out must not share memory with the input or the parameters")
    return out


def _stat(a, shape, name):
    if a is None:
        raise TypeError(f"{name} must be a float64 array of shape {shape}, got None")
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.size != int(np.prod(shape)):
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return _c(a.reshape(shape), np.float64, shape, name)


def _kernels(x):
    return _norm16 if x.dtype == _F16 else _norm


def layer_norm_fwd(x, w, b, eps, out):
    x = _data(x, 2)
    D, pd = x.shape[1], compute_dtype(x.dtype)
    w, b = _c(w, pd, (D,), "w"), _c(b, pd, (D,), "b")
    return _kernels(x).layer_norm_fwd(x, w, b, eps, _out(out, x, w, b), get_num_threads())


def layer_norm_bwd(dy, x, mean, rstd, w, need_dw, need_db):
    x = _data(x, 2)
    R, D = x.shape
    return _kernels(x).layer_norm_bwd(_c(dy, x.dtype, x.shape, "dy", True), x,
                                      _stat(mean, (R,), "mean"), _stat(rstd, (R,), "rstd"),
                                      _c(w, compute_dtype(x.dtype), (D,), "w"), need_dw, need_db,
                                      get_num_threads())


def rms_norm_fwd(x, w, eps, out):
    x = _data(x, 2)
    w = _c(w, compute_dtype(x.dtype), (x.shape[1],), "w")
    return _kernels(x).rms_norm_fwd(x, w, eps, _out(out, x, w), get_num_threads())


def rms_norm_bwd(dy, x, rstd, w, need_dw):
    x = _data(x, 2)
    return _kernels(x).rms_norm_bwd(_c(dy, x.dtype, x.shape, "dy", True), x,
                                    _stat(rstd, (x.shape[0],), "rstd"),
                                    _c(w, compute_dtype(x.dtype), (x.shape[1],), "w"), need_dw,
                                    get_num_threads())


def _groups(G, C, name="G"):
    G = check_int(G, name)
    if G < 1 or C % G:
        raise ValueError(f"{name} must be >= 1 and divide C={C}, got {G}")
    return G


def group_norm_fwd(x, G, w, b, eps, out):
    x = _data(x, 3)
    C, pd = x.shape[1], compute_dtype(x.dtype)
    w, b = _c(w, pd, (C,), "w"), _c(b, pd, (C,), "b")
    return _kernels(x).group_norm_fwd(x, _groups(G, C), w, b, eps, _out(out, x, w, b),
                                      get_num_threads())


def group_norm_bwd(dy, x, mean, rstd, G, w, need_dw, need_db):
    x = _data(x, 3)
    N, C = x.shape[:2]
    G = _groups(G, C)
    return _kernels(x).group_norm_bwd(_c(dy, x.dtype, x.shape, "dy", True), x,
                                      _stat(mean, (N * G,), "mean"), _stat(rstd, (N * G,), "rstd"),
                                      G, _c(w, compute_dtype(x.dtype), (C,), "w"), need_dw, need_db,
                                      get_num_threads())


def batch_norm_fwd(x, w, b, eps, out):
    x = _data(x, 3)
    C, pd = x.shape[1], compute_dtype(x.dtype)
    w, b = _c(w, pd, (C,), "w"), _c(b, pd, (C,), "b")
    return _kernels(x).batch_norm_fwd(x, w, b, eps, _out(out, x, w, b), get_num_threads())


def batch_norm_eval(x, mean, rstd, w, b, out):
    x = _data(x, 3)
    C, pd = x.shape[1], compute_dtype(x.dtype)
    w, b = _c(w, pd, (C,), "w"), _c(b, pd, (C,), "b")
    return _kernels(x).batch_norm_eval(x, _stat(mean, (C,), "mean"), _stat(rstd, (C,), "rstd"),
                                       w, b, _out(out, x, w, b), get_num_threads())


def batch_norm_bwd(dy, x, mean, rstd, w, training, need_dw, need_db):
    x = _data(x, 3)
    C = x.shape[1]
    return _kernels(x).batch_norm_bwd(_c(dy, x.dtype, x.shape, "dy", True), x,
                                      _stat(mean, (C,), "mean"), _stat(rstd, (C,), "rstd"),
                                      _c(w, compute_dtype(x.dtype), (C,), "w"), bool(training),
                                      need_dw, need_db, get_num_threads())


# ---------------------------------------------------------------- decoding


def _rows2d(x, name, dtypes=_FLOATS):
    """x as the kernels need it: a C-contiguous, aligned, non-empty 2-D ndarray of one
    of ``dtypes`` (float32/float64 unless a caller reads float16 too)."""
    if not isinstance(x, np.ndarray) or x.dtype not in dtypes:
        names = "/".join(str(d) for d in dtypes)
        raise TypeError(f"{name} must be a {names} numpy.ndarray, got "
                        f"{type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, n), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape} (the public "
                         "functions handle empty inputs before dispatching)")
    if not x.flags.c_contiguous or not x.flags.aligned:
        raise ValueError(f"{name} must be C-contiguous and aligned (the public functions "
                         f"pack it), got strides {x.strides} for shape {x.shape} "
                         f"(aligned={x.flags.aligned})")
    return x


def _k(k, limit, what):
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    k = int(k)
    if not 1 <= k <= limit:
        raise ValueError(f"k must be in [1, {limit}] ({what}), got {k}")
    return k


def _bits(x):
    """a float16 array as the uint16 view of its bits (what the float16 kernels read)"""
    return x.view(np.uint16)


def topk(x, k):
    x = _rows2d(x, "x", _KERNEL_DTYPES)
    k = _k(k, x.shape[1], "the row length n")
    if x.dtype == _F16:
        vals, idx = _decode.topk_f16(_bits(x), k, get_num_threads())
        return vals.view(np.float16), idx
    return _decode.topk(x, k, get_num_threads())


def log_softmax(x, out):
    x = _rows2d(x, "x", _KERNEL_DTYPES)
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
        if (out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous
                or not out.flags.aligned or not out.flags.writeable):
            raise ValueError(f"out must be a writeable, aligned, C-contiguous {x.dtype} array of "
                             f"shape {x.shape}, got {out.dtype} {out.shape} (c_contiguous="
                             f"{out.flags.c_contiguous}, aligned={out.flags.aligned}, "
                             f"writeable={out.flags.writeable})")
    if x.dtype == _F16:
        res = _decode.log_softmax_f16(_bits(x), None if out is None else _bits(out),
                                      get_num_threads())
        return res.view(np.float16) if out is None else out
    return _decode.log_softmax(x, out, get_num_threads())


def beam_topk(log_probs, beam_scores, k, normalize):
    lp = _rows2d(log_probs, "log_probs", _KERNEL_DTYPES)
    B, N = lp.shape
    # float16 log-probs are computed in float32: the beam scores come in that dtype
    sdt = compute_dtype(lp.dtype)
    if not isinstance(beam_scores, np.ndarray) or beam_scores.dtype != sdt:
        raise TypeError(f"beam_scores must be a {sdt} numpy.ndarray (for {lp.dtype} "
                        f"log_probs), got {type(beam_scores).__name__} "
                        f"{getattr(beam_scores, 'dtype', '')}")
    if (beam_scores.shape != (B,) or not beam_scores.flags.c_contiguous
            or not beam_scores.flags.aligned):
        raise ValueError(f"beam_scores must be an aligned contiguous array of shape ({B},), "
                         f"got shape {beam_scores.shape} strides {beam_scores.strides}")
    normalize = check_flag(normalize, "normalize")
    k = _k(k, B * N, "the number of candidates B*N")
    if lp.dtype == _F16:
        return _decode.beam_topk_f16(_bits(lp), beam_scores, k, normalize, get_num_threads())
    return _decode.beam_topk(lp, beam_scores, k, normalize, get_num_threads())


# ---------------------------------------------------------------- quantization


def _py_int(v, name, low, high, bounds=None):
    """An int in [low, high], so it fits the kernel's C argument (no OverflowError)."""
    v = check_int(v, name)
    if not low <= v <= high:
        raise ValueError(f"{name} must be in {bounds or [low, high]}, got {v}")
    return v


# The kernel modules check every array, shape, stride and block size they index with
# (they may be called directly too); these wrappers check what must hold before the
# Python values can become C arguments.

def quantize(w, bits, scheme, block_size, rounding, per_tensor):
    if not isinstance(w, np.ndarray) or w.dtype != np.float32:
        raise TypeError(f"w must be a float32 numpy.ndarray, got {type(w).__name__} "
                        f"{getattr(w, 'dtype', '')}")
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"w must be a non-empty 2-D array (d_in, d_out), got shape {w.shape}")
    bits = _py_int(bits, "bits", 2, 8)
    per_tensor = check_flag(per_tensor, "per_tensor")
    d_in = w.shape[0]
    bs = _py_int(block_size, "block_size", 1, d_in,
                 f"[1, d_in={d_in}] (a larger block is one block of d_in)")
    return _quant.quantize(w, bits, scheme, bs, rounding, per_tensor, get_num_threads())


def dequantize(q, out):
    return _quant.dequantize(q, out, get_num_threads())


def qmatmul(x, q, transpose, out, *, _path=None):
    transpose = check_flag(transpose, "transpose")
    return _quant.qmatmul(x, q, transpose, out, get_num_threads(), _path)


backend = Backend(name="cython", ops={op: globals()[op] for op in NORM_OPS + DECODE_OPS + QUANT_OPS})
