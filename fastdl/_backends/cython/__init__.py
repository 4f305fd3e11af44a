"""The Cython backend: OpenMP + run-time-dispatched SIMD kernels.

Importing this package loads the compiled extensions; if they are missing the
registry lists the backend with the import error and falls back to NumPy.
Every op runs behind its spec's argument check (``fastdl.ops``), so the kernels
receive the arrays as they index them (C-contiguous, aligned, the declared
shapes and dtypes); the op table is built from the kernel modules by op name.
"""
import inspect
import os
import warnings

import numpy as np

from fastdl._threads import get_num_threads
from fastdl import ops
from fastdl._backends.cython import _cpu, _decode, _lora, _norm, _norm_stats, _qops, _quant, _rnn
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

# The kernel of op X is the function X of one of these modules, taking the op's arguments
# (as OpSpec.check delivers them) and then the thread count; an X_f16 beside it takes
# float16 arrays as their uint16 bits (the decode kernels), returning uint16 for float16.
KERNEL_MODULES = (_norm_stats, _norm, _decode, _qops, _quant, _rnn, _lora)
_F16, _U16 = np.dtype(np.float16), np.dtype(np.uint16)


def _kernel_problem(spec, fn):
    """Why ``fn`` cannot be op ``spec``'s kernel (its arguments, then the thread count)."""
    params = list(inspect.signature(fn).parameters.values())
    names = tuple(p.name for p in params[:len(spec.args)])
    required = [p for p in params[len(spec.args) + 1:] if p.default is p.empty]
    if names != spec.arg_names or len(params) <= len(spec.args) or required:
        return (f"kernel {fn.__module__}.{fn.__name__}{inspect.signature(fn)} must take "
                f"({', '.join(spec.arg_names)}, nthreads)")
    return None


def _op(spec):
    """The backend function of op ``spec``: its kernel at the current thread count."""
    mod = next((m for m in KERNEL_MODULES if hasattr(m, spec.name)), None)
    if mod is None:
        return None
    fn, fn16 = getattr(mod, spec.name), getattr(mod, spec.name + "_f16", None)
    for f in (fn, fn16):
        problem = f is not None and _kernel_problem(spec, f)
        if problem:
            raise TypeError(problem)

    def run(*args):
        if fn16 is None or args[0].dtype != _F16:
            return fn(*args, get_num_threads())
        # float16 arrays go in as uint16 views; uint16 results come back as float16, and
        # a view of a given array (out) as that array itself
        views = {id(a): a.view(_U16) for a in args
                 if isinstance(a, np.ndarray) and a.dtype == _F16}
        given = {id(views[id(a)]): a for a in args if id(a) in views}
        res = fn16(*[views.get(id(a), a) for a in args], get_num_threads())

        def half(r):
            if isinstance(r, np.ndarray) and r.dtype == _U16:
                return given.get(id(r), r.view(_F16))
            return r
        return tuple(map(half, res)) if isinstance(res, tuple) else half(res)

    run.__name__ = run.__qualname__ = spec.name
    run.__doc__ = fn.__doc__
    run.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in spec.arg_names])
    return run


backend = Backend(name="cython", ops=ops.implement(
    {spec.name: fn for spec in ops.BUILTIN_OPS if (fn := _op(spec)) is not None}))
# direct calls (fastdl._backends.cython.topk(...)) get the same checks as dispatched ones
globals().update(backend.ops)
