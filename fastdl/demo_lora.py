"""``fastdl demo``, low-rank adapters: the course's LoRA / QLoRA complexity answers
counted by an instrumented transformer layer, the LoRA-or-QLoRA decision table from
measured time and memory, and a short QLoRA fine-tuning run."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fastdl import lora_report
from fastdl.demo_course import DECISION

# the complexity table's layer: small, so the instrumented run is instant
COUNT_SHAPE = dict(n=16, d=32, h=2, r=4)
# the decision table's layer; its memory limit is half the MHA's float32 weights (8·h·d²
# bytes): a float32 LFFN (4·d²) and a quantized MHA (about 2.1·h·d²) fit, a float32 MHA does not
DECIDE_SHAPE = dict(d=256, h=4, n=64, r=8)
BENCH_SHAPE = dict(d=1024, h=4, n=128, r=8)      # the benchmark's transformer layer


def _num(v) -> str:
    return "—" if v is None else f"{v:,}"


def complexity_table(console: Console, shape=None) -> None:
    s = dict(COUNT_SHAPE, **(shape or {}))
    rows = lora_report.complexity_rows(**s)
    t = Table(title=f"LoRA / QLoRA in the transformer layer (n = {s['n']}, d = {s['d']}, "
              f"h = {s['h']}, r = {s['r']}, NF4): counted by an instrumented run, the exact "
              "formula, the usual O() term")
    for col in ("quantity", "counted", "formula", "O() term", "O() value"):
        t.add_column(col, justify="left" if col in ("quantity", "O() term") else "right")
    for q, counted, formula, otext, oval in rows:
        mark = "" if counted == formula else " ✗"
        t.add_row(q, _num(counted) + mark, _num(formula), otext, _num(oval))
    console.print(t)
    console.print("  The O() column is the course's answer evaluated without constants; where "
                  "it falls short of the count (MHA's per-head adapters and projections, "
                  "QLoRA's dequantization of every head's weights) the corrections at the end "
                  "say by what (“mha_adapters”, “mha_dequant”); frozen memory is m bits per "
                  "weight plus the block scales.", markup=False)
    return rows


def decision_table(console: Console, shape=None, memory_limit=None, repeat=3) -> dict:
    s = dict(DECIDE_SHAPE, **(shape or {}))
    limit = memory_limit or 8 * s["h"] * s["d"] * s["d"]
    measures = lora_report.measure_stages(**s, repeat=repeat)
    table = lora_report.decide(measures, limit)
    t = Table(title=f"LoRA or QLoRA (NF4) per stage, measured at d = {s['d']}, h = {s['h']}, "
              f"n = {s['n']}, r = {s['r']}; memory limit {limit / 2**20:.2f} MiB of frozen "
              "weights per stage; the course's choice in brackets")
    for col in ("", "MHA", "LFFN"):
        t.add_column(col)
    for row in ("memory limit", "faster", "both"):
        t.add_row(row, *(_choice(table[st][row], DECISION[st][row]) for st in ("mha", "ffn")))
    console.print(t)
    for stage, name in (("mha", "MHA"), ("ffn", "LFFN")):
        console.print(f"  {name}: {table[stage]['why']}")
    if any(table[st][row] == "either" for st in table for row in ("faster", "both")):
        console.print("  “either”: the two measured times are within 10% of each other (the "
                      "course picks LoRA, since QLoRA dequantizes every weight on each "
                      "forward; here that costs little next to the matrix products).",
                      markup=False)
    return table


def _choice(measured: str, course: str) -> str:
    mark = "✓" if measured == course else "≈" if measured == "either" else "✗"
    return f"{measured} [{course}] {mark}"


def finetune(console: Console, out_dir=None) -> None:
    import os
    from fastdl.lora_finetune import finetune as run
    res = run(path=None if out_dir is None else os.path.join(out_dir, "qlora-adapter"))
    console.print(f"\nQLoRA fine-tuning on the CPU (NF4 base, adapters on q, k, v, f; the "
                  f"teacher hides a low-rank change): loss {res.first:.3g} → {res.last:.3g} "
                  f"({res.reduction:.0f}× lower) in {len(res.losses)} AdamW steps, "
                  f"{res.seconds:.1f} s; adapters saved in PEFT's format and reloaded "
                  f"(largest output difference {res.reloaded_max_diff:.1g})"
                  + (f"; files in {res.path}." if res.path else "."))


def run(console: Console, out_dir=None, *, train: bool = True) -> None:
    complexity_table(console)
    decision_table(console)
    if train:
        finetune(console, out_dir)
