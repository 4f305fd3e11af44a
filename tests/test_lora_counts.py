"""The operations the LoRA layers ask of the kernels (count_ops, from the shapes of every
call) equal fastdl.complexity's exact formulas, term by term."""
import dataclasses

import numpy as np
import pytest

from fastdl import complexity
from fastdl.lora import LoRALinear, QLoRALinear, TransformerLayer, count_ops


def _fields(counts):
    return {k: v for k, v in dataclasses.asdict(counts).items() if v}


@pytest.mark.parametrize("n, d, h, r, batch", [(5, 8, 2, 2, 1), (7, 16, 3, 4, 2), (1, 4, 1, 1, 3)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("targets", [("q", "k", "v", "f"), ("v", "o"), ("f",)])
def test_layer_counts_equal_the_formulas(n, d, h, r, batch, causal, targets):
    lay = TransformerLayer(d, h, r, lora_targets=targets, causal=causal, rng=0,
                           quantize={"mha": "nf4"})
    H = np.random.default_rng(0).standard_normal((batch, n, d)).astype(np.float32)
    with count_ops() as c:
        lay.backward(lay.forward(H))
    kw = dict(targets=targets, causal=causal, batch=batch)
    assert c["forward"] == _fields(complexity.lora_layer_macs(n, d, h, r, **kw))
    assert {k: v for k, v in c["backward"].items() if v} == \
        _fields(complexity.lora_backward_macs(n, d, h, r, **kw))
    assert c["dequantized"]["forward"] == complexity.qlora_dequant_elements(d, h, stage="mha")
    assert c["dequantized"]["backward"] == complexity.qlora_dequant_elements(
        d, h, stage="mha", backward=True)
    assert lay.trainable_parameters() == complexity.lora_trainable_params(d, h, r,
                                                                          targets=targets)


@pytest.mark.parametrize("stage", ["mha", "ffn"])
def test_stage_counts(stage):
    n, d, h, r = 6, 8, 2, 3
    lay = TransformerLayer(d, h, r, rng=0, quantize={"ffn": "int8", "mha": "int4"})
    with count_ops() as c:
        lay.backward(lay.forward(np.ones((n, d), np.float32), stage=stage))
    fwd = (complexity.lora_mha_macs if stage == "mha" else
           lambda n, d, h, r: complexity.lora_ffn_macs(n, d, r))(n, d, h, r)
    assert c["forward"] == _fields(fwd)
    assert c["dequantized"]["forward"] == complexity.qlora_dequant_elements(d, h, stage=stage)
    bits = 8 * lay.frozen_bytes(stage)
    quant = {"bits": 4 if stage == "mha" else 8, "block_size": 64}
    assert bits == complexity.frozen_weight_bits(d, h, stage=stage, quant=quant)


@pytest.mark.parametrize("cls", [LoRALinear, QLoRALinear])
@pytest.mark.parametrize("need_dx", [True, False])
def test_linear_counts(cls, need_dx):
    n, d_in, d_out, r = 3, 64, 24, 5
    lay = cls(np.ones((d_in, d_out), np.float32), r)
    with count_ops() as c:
        lay.forward(np.ones((n, d_in), np.float32))
        lay.backward(np.ones((n, d_out), np.float32), need_dx=need_dx)
    assert c["forward"] == _fields(complexity.lora_linear_macs(n, d_in, d_out, r))
    assert {k: v for k, v in c["backward"].items() if v} == _fields(
        complexity.lora_linear_backward_macs(n, d_in, d_out, r, need_dx=need_dx))
    dq = d_in * d_out if cls is QLoRALinear else 0
    assert c["dequantized"] == {"forward": dq, "backward": dq if need_dx else 0}


def test_no_counting_outside_the_block():
    lay = LoRALinear(np.ones((4, 4)), 1)
    with count_ops() as c:
        pass
    lay.forward(np.ones((2, 4)))
    assert c["forward"] == {}
