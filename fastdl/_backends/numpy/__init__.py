"""The NumPy backend: readable reference implementations of every op."""
from fastdl._backends.numpy import decode, norm, quant
from fastdl.decode.ops import DECODE_OPS
from fastdl.norm import NORM_OPS
from fastdl.quant import QUANT_OPS
from fastdl.registry import Backend

backend = Backend(name="numpy", ops={**{op: getattr(norm, op) for op in NORM_OPS},
                                     **{op: getattr(decode, op) for op in DECODE_OPS},
                                     **{op: getattr(quant, op) for op in QUANT_OPS}})
