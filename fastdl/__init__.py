"""fastdl: fast CPU kernels for deep-learning building blocks, with pluggable backends."""
__version__ = "0.1.0"

from fastdl._build_info import build_info
from fastdl._threads import get_num_threads, set_num_threads
from fastdl import decode, quant
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
