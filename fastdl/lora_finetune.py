"""A QLoRA fine-tuning run that fits on a CPU in seconds: adapters on an NF4 base
learn a teacher task.

The teacher is a frozen random transformer layer (float32) whose value and
feed-forward projections carry a hidden low-rank change; the student holds the
teacher's frozen weights quantized to NF4 (blocks of 64, double quantization)
plus zero-initialized adapters, and learns the change from random inputs with
AdamW under a cosine learning-rate schedule.  The loss is the mean squared
difference of the two layers' outputs; what remains at the end is mostly the
NF4 rounding of the frozen weights, which a rank-r adapter can only partly
absorb.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from fastdl.lora import TransformerLayer, load_adapter, save_adapter
from fastdl.optim import AdamW

__all__ = ["FinetuneResult", "teacher_and_student", "finetune"]


@dataclass
class FinetuneResult:
    losses: list = field(default_factory=list)     # the loss of every step
    seconds: float = 0.0
    reloaded_max_diff: float = float("nan")        # |student − student reloaded from files|
    path: str | None = None

    @property
    def first(self) -> float:
        return self.losses[0]

    @property
    def last(self) -> float:
        """Mean of the last 10 steps (one step's loss is noisy)."""
        return float(np.mean(self.losses[-10:]))

    @property
    def reduction(self) -> float:
        return self.first / self.last


def _weights(layer):
    h = layer.h
    w = {p: np.stack([layer.frozen_weight(f"heads.{i}.{p}") for i in range(h)]) for p in "qkv"}
    w["o"], w["f"] = layer.frozen_weight("out"), layer.frozen_weight("ffn")
    return w


def teacher_and_student(d=64, h=2, r=4, *, change=2.0, quantize="nf4", seed=0):
    """(teacher, student): the teacher's adapters on v and f hold the hidden change
    (entries N(0, change²/d)); the student quantizes the teacher's frozen weights."""
    rng = np.random.default_rng(seed)
    teacher = TransformerLayer(d, h, r, rng=rng)
    for k, v in teacher.params.items():
        hidden = ".v." in k or k.startswith("ffn.")
        v[...] = rng.standard_normal(v.shape) * (change / math.sqrt(d)) if hidden else 0
    teacher.eval()
    q = None if quantize is None else {"mha": quantize, "ffn": quantize}
    student = TransformerLayer(d, h, r, weights=_weights(teacher), quantize=q, rng=rng)
    return teacher, student


def finetune(d=64, h=2, r=4, *, n=32, batch=8, steps=300, lr=1e-2, seed=0, path=None,
             backend=None) -> FinetuneResult:
    """Train the student's adapters for ``steps`` AdamW steps; save them in PEFT's format
    to ``path`` (a temporary directory when None), load them into a fresh student and
    report the largest output difference."""
    teacher, student = teacher_and_student(d, h, r, seed=seed)
    opt = AdamW(student.params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed + 1)
    res = FinetuneResult()
    t0 = time.perf_counter()
    for step in range(steps):
        H = rng.standard_normal((batch, n, d), dtype=np.float32)
        target = teacher.forward(H, backend=backend)
        diff = student.forward(H, backend=backend) - target
        res.losses.append(float(np.mean(diff * diff)))
        student.backward(diff * np.float32(2 / diff.size), backend=backend)
        opt.lr = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step(student.grads)
    res.seconds = time.perf_counter() - t0
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = tmp.name
    save_adapter(student.lora_layers(), path)
    _, fresh = teacher_and_student(d, h, r, seed=seed)
    load_adapter(path, fresh.lora_layers())
    H = rng.standard_normal((n, d), dtype=np.float32)
    res.reloaded_max_diff = float(np.abs(fresh.eval().forward(H)
                                         - student.eval().forward(H)).max())
    res.path = None if tmp is not None else str(path)
    if tmp is not None:
        tmp.cleanup()
    return res
