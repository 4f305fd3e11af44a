"""Each op's contract, declared once: ``fastdl.ops.<name>`` is its ``OpSpec``.

The public functions call op objects (``ops.topk(x, k, backend=None)``
dispatches to a backend); the registry knows the ops from here and checks that
a backend's functions take the spec's arguments; every backend's functions run
behind ``OpSpec.check``, the one check of what the kernels may assume; the
conformance suite (``fastdl.testing.conformance``) reads the specs for valid
cases and the bad-input table.  A plugin that brings an op of its own defines
its spec first (``fastdl.ops.define``).
"""
from __future__ import annotations

from fastdl.ops._spec import SPECS, Arg, OpSpec, Result, checked, define, get
from fastdl.ops.decode import DECODE_OPS, beam_topk, log_softmax, topk
from fastdl.ops.norm import (NORM_KINDS, NORM_OPS, batch_norm_bwd, batch_norm_eval,
                             batch_norm_fwd, group_norm_bwd, group_norm_fwd, layer_norm_bwd,
                             layer_norm_fwd, norm_stats, rms_norm_bwd, rms_norm_fwd)
from fastdl.ops.quant import (QUANT_OPS, ROUNDINGS, SCHEMES, dequantize, qmatmul, qmatmul_bf16,
                              qmatmul_int8, quantize)
from fastdl.ops.rnn import RNN_OPS, birnn_bwd, birnn_fwd
from fastdl.ops.lora import LORA_OPS, attention_bwd, attention_fwd, lora_bwd, lora_fwd

BUILTIN_OPS = NORM_OPS + DECODE_OPS + QUANT_OPS + RNN_OPS + LORA_OPS

__all__ = ["Arg", "OpSpec", "Result", "SPECS", "BUILTIN_OPS", "checked", "define", "get",
           "names", "implement", "table"] + [op.name for op in BUILTIN_OPS]


def names() -> tuple[str, ...]:
    """Every known op name (built-in and defined by plugins), sorted."""
    return tuple(sorted(SPECS))


def implement(functions: dict) -> dict:
    """``{op name: function}`` -> ``{op name: checked function}``, the ``ops`` of a
    backend: each function is checked against its spec's signature (TypeError if it
    cannot take the op's arguments) and runs behind the spec's argument check."""
    return {name: checked(name, fn) for name, fn in functions.items()}


def table(area: str | None = None) -> str:
    """The ops as a text table: name, arguments, results (what the docs show)."""
    rows = []
    for spec in BUILTIN_OPS + tuple(s for s in SPECS.values() if s not in BUILTIN_OPS):
        if area is not None and spec.area != area:
            continue
        args = ", ".join(f"{a.name}: {a.describe()}" for a in spec.args)
        res = ", ".join(r.name + (" | None" if r.optional else "") for r in spec.results)
        rows.append(f"{spec.name}({args}) -> {res}")
    return "\n".join(rows)
