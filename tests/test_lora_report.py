"""The LoRA-or-QLoRA decision table and the stage measurements it is made from."""
import pytest

from fastdl.lora_report import StageMeasure, decide, measure_stages

MiB = 2 ** 20


def _m(mha_lora, mha_q, ffn_lora, ffn_q):
    return [StageMeasure("mha", "LoRA", mha_lora, 64 * MiB, 1), StageMeasure("mha", "QLoRA",
            mha_q, 8 * MiB, 1), StageMeasure("ffn", "LoRA", ffn_lora, 4 * MiB, 1),
            StageMeasure("ffn", "QLoRA", ffn_q, MiB // 2, 1)]


def test_the_course_s_table_when_lora_is_faster():
    t = decide(_m(1.0, 1.3, 0.1, 0.13), 32 * MiB)
    assert [t["mha"][k] for k in ("memory limit", "faster", "both")] == ["QLoRA", "LoRA", "QLoRA"]
    assert [t["ffn"][k] for k in ("memory limit", "faster", "both")] == ["LoRA", "LoRA", "LoRA"]
    assert "64.0 MiB" in t["mha"]["why"] and "1000.00 ms vs 1300.00 ms" in t["mha"]["why"]


def test_ties_and_limits():
    t = decide(_m(1.0, 1.05, 0.2, 0.1), 10 * MiB)
    assert t["mha"]["faster"] == "either" and t["mha"]["both"] == "QLoRA"
    assert t["ffn"]["memory limit"] == "LoRA" and t["ffn"]["both"] == "QLoRA"
    t = decide(_m(1.0, 1.05, 0.2, 0.1), 2 * MiB)
    assert t["ffn"]["memory limit"] == "QLoRA" and t["ffn"]["faster"] == "QLoRA"
    assert t["mha"]["memory limit"] == "neither fits"
    t = decide(_m(1.0, 1.0, 0.1, 0.1), 100 * MiB)
    assert t["mha"]["both"] == "LoRA"                # a tie keeps full precision
    assert decide(_m(1, 1, 1, 1), 1)["mha"]["both"] == "neither fits"
    with pytest.raises(ValueError, match="memory_limit must be a positive number of bytes"):
        decide(_m(1, 1, 1, 1), 0)


def test_measure_stages_reports_every_choice():
    ms = measure_stages(d=32, h=2, n=8, r=2, repeat=1)
    assert [(m.stage, m.method) for m in ms] == [("mha", "LoRA"), ("mha", "QLoRA"),
                                                 ("ffn", "LoRA"), ("ffn", "QLoRA")]
    by = {(m.stage, m.method): m for m in ms}
    assert by["mha", "LoRA"].frozen_bytes == 4 * (4 * 2) * 32 * 32
    assert by["mha", "QLoRA"].frozen_bytes < by["mha", "LoRA"].frozen_bytes / 7
    assert by["ffn", "LoRA"].trainable == 2 * 32 * 2
    assert all(m.seconds > 0 for m in ms)
