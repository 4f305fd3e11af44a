"""The Cython backend: OpenMP + run-time-dispatched SIMD kernels.

Importing this package loads the compiled extensions; if they are missing the
registry lists the backend with the import error and falls back to NumPy.
Every op runs behind its spec's argument check (``fastdl.ops``): the functions
below receive the arrays as the kernels index them (C-contiguous, aligned, the
declared shapes and dtypes), so they only pick the kernel and the thread count.
"""
import os
import warnings

import numpy as np

from fastdl._threads import get_num_threads
from fastdl import ops
from fastdl._backends.cython import _cpu, _decode, _norm, _norm_stats, _quant
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

# float16 data are read as their uint16 bits and computed in float32 inside the kernels
# (the norm drivers take them as they are; the decode kernels have *_f16 entry points).
_F16 = np.dtype(np.float16)


def _bits(x):
    return None if x is None else x.view(np.uint16)


def norm_stats(x, kind, num_groups, ddof):
    return _norm_stats.norm_stats(x, kind, num_groups, ddof, get_num_threads())


def layer_norm_fwd(x, w, b, eps, out):
    return _norm.layer_norm_fwd(x, w, b, eps, out, get_num_threads())


def layer_norm_bwd(dy, x, mean, rstd, w, need_dw, need_db):
    return _norm.layer_norm_bwd(dy, x, mean, rstd, w, need_dw, need_db, get_num_threads())


def rms_norm_fwd(x, w, eps, out):
    return _norm.rms_norm_fwd(x, w, eps, out, get_num_threads())


def rms_norm_bwd(dy, x, rstd, w, need_dw):
    return _norm.rms_norm_bwd(dy, x, rstd, w, need_dw, get_num_threads())


def group_norm_fwd(x, G, w, b, eps, out):
    return _norm.group_norm_fwd(x, G, w, b, eps, out, get_num_threads())


def group_norm_bwd(dy, x, mean, rstd, G, w, need_dw, need_db):
    # the kernels read the (N, G) statistics flat
    return _norm.group_norm_bwd(dy, x, mean.reshape(-1), rstd.reshape(-1), G, w, need_dw,
                                      need_db, get_num_threads())


def batch_norm_fwd(x, w, b, eps, out):
    return _norm.batch_norm_fwd(x, w, b, eps, out, get_num_threads())


def batch_norm_eval(x, mean, rstd, w, b, out):
    return _norm.batch_norm_eval(x, mean, rstd, w, b, out, get_num_threads())


def batch_norm_bwd(dy, x, mean, rstd, w, training, need_dw, need_db):
    return _norm.batch_norm_bwd(dy, x, mean, rstd, w, training, need_dw, need_db,
                                      get_num_threads())


def topk(x, k):
    if x.dtype == _F16:
        vals, idx = _decode.topk_f16(_bits(x), k, get_num_threads())
        return vals.view(np.float16), idx
    return _decode.topk(x, k, get_num_threads())


def log_softmax(x, out):
    if x.dtype == _F16:
        res = _decode.log_softmax_f16(_bits(x), _bits(out), get_num_threads())
        return res.view(np.float16) if out is None else out
    return _decode.log_softmax(x, out, get_num_threads())


def beam_topk(log_probs, beam_scores, k, normalize):
    if log_probs.dtype == _F16:
        return _decode.beam_topk_f16(_bits(log_probs), beam_scores, k, normalize,
                                     get_num_threads())
    return _decode.beam_topk(log_probs, beam_scores, k, normalize, get_num_threads())


# The kernel module checks the QuantizedTensor's arrays itself (it indexes them).

def quantize(w, bits, scheme, block_size, rounding, per_tensor):
    return _quant.quantize(w, bits, scheme, block_size, rounding, per_tensor, get_num_threads())


def dequantize(q, out):
    return _quant.dequantize(q, out, get_num_threads())


def qmatmul(x, q, transpose, out, *, _path=None):
    return _quant.qmatmul(x, q, transpose, out, get_num_threads(), _path)


backend = Backend(name="cython", ops=ops.implement({op.name: globals()[op.name]
                                                    for op in ops.BUILTIN_OPS}))
# direct calls (fastdl._backends.cython.topk(...)) get the same checks as dispatched ones
globals().update(backend.ops)
