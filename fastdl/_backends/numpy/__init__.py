"""The NumPy backend: readable reference implementations of every op."""
from fastdl import ops
from fastdl._backends.numpy import decode, lora, norm, quant, rnn
from fastdl.registry import Backend

_AREAS = {"norm": norm, "decode": decode, "quant": quant, "rnn": rnn, "lora": lora}

backend = Backend(name="numpy", ops=ops.implement(
    {op.name: getattr(_AREAS[op.area], op.name) for op in ops.BUILTIN_OPS}))
