"""fastdl: fast CPU kernels for deep-learning building blocks, with pluggable backends."""
__version__ = "0.1.0"

from fastdl._build_info import build_info
from fastdl._threads import get_num_threads, set_num_threads
from fastdl.norm import NORM_KINDS, norm_stats
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
    "__version__", "build_info", "get_num_threads", "set_num_threads", "norm_stats",
    "NORM_KINDS", "Backend", "BackendInfo", "BackendNotImplementedError", "backends",
    "register_backend", "set_backend", "use_backend", "which_backend",
]
