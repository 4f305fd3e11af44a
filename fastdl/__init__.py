"""fastdl: fast CPU kernels for deep-learning building blocks, with pluggable backends.

The submodules ``fastdl.nn``, ``fastdl.norm``, ``fastdl.decode``, ``fastdl.quant``,
``fastdl.rnn``, ``fastdl.rnn_analysis``, ``fastdl.registry``, ``fastdl.complexity``
and ``fastdl.bench`` are reachable as
attributes after ``import fastdl``; those not needed by the names below are imported
on first use, so ``import fastdl`` stays fast.

Array arguments may be any array-like; ndarray subclasses (``np.matrix``,
``np.memmap``, your own) are read as plain ndarrays (a view, no copy), and masked
arrays are refused with a TypeError, since the kernels would read masked entries as
data: pass ``a.filled(value)`` instead.
"""
__version__ = "0.1.0"

import importlib as _importlib

from fastdl._build_info import build_info
from fastdl._threads import get_num_threads, set_num_threads
from fastdl.norm import (
    NORM_KINDS,
    NormStats,
    batch_norm,
    batch_norm_backward,
    group_norm,
    group_norm_backward,
    instance_norm,
    instance_norm_backward,
    layer_norm,
    layer_norm_backward,
    norm_stats,
    rms_norm,
    rms_norm_backward,
)
from fastdl.registry import (
    Backend,
    BackendInfo,
    BackendNotImplementedError,
    backends,
    register_backend,
    set_backend,
    use_backend,
    which_backend,
)

__all__ = [
    "__version__", "decode", "quant", "build_info", "get_num_threads", "set_num_threads", "norm_stats",
    "NORM_KINDS", "NormStats", "batch_norm", "layer_norm", "instance_norm", "group_norm",
    "rms_norm", "batch_norm_backward", "layer_norm_backward", "instance_norm_backward",
    "group_norm_backward", "rms_norm_backward", "Backend", "BackendInfo", "BackendNotImplementedError", "backends",
    "register_backend", "set_backend", "use_backend", "which_backend",
]

# public submodules, imported on first attribute access (PEP 562)
_SUBMODULES = ("bench", "complexity", "decode", "lora", "nn", "norm", "optim", "quant",
               "registry", "rnn", "rnn_analysis")


def __getattr__(name: str):
    if name in _SUBMODULES:
        # import_module also binds the submodule on this package: later lookups are direct
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
