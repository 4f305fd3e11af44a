"""The NumPy backend: readable reference implementations of every op."""
from fastdl._backends.numpy import norm
from fastdl.registry import Backend

OPS = ("norm_stats", "layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd",
       "group_norm_fwd", "group_norm_bwd", "batch_norm_fwd", "batch_norm_eval", "batch_norm_bwd")

backend = Backend(name="numpy", ops={op: getattr(norm, op) for op in OPS})
