"""Plain-text tables for ``fastdl bench``, fitted to a width and printable row by row.

Rows are printed as their case finishes (a log or a pipe shows progress at
once), so column widths are fixed before the first case runs: from the
console's width and the names of the selected cases.  No value is ever cut:
a cell longer than its column wraps onto more lines (case names at ``/``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from fastdl.bench.runner import fmt_goal


def fmt_time(t) -> str:
    """Three significant digits in a unit that keeps the number under 1000."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "-"
    for scale, unit in ((1e-6, "ns"), (1e-3, "µs"), (1.0, "ms")):
        if t < scale:
            return f"{_sig3(t / scale * 1e3)} {unit}"
    return f"{_sig3(t)} s"


def _sig3(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def fmt_ratio(x) -> str:
    """At most five characters: 0.27, 5.12, 74.8, 1234, 2e+04."""
    if x is None or math.isnan(x):
        return "-"
    if x < 1000:
        return _sig3(x)
    return f"{x:.0f}" if x < 10000 else f"{x:.0e}"


def wrap(text: str, width: int, seps: str = "/ ") -> list[str]:
    """Lines of at most ``width`` characters, broken after a separator where
    possible (else mid-word); continuation lines are indented by two."""
    width = max(width, 4)
    pieces, cur = [], ""
    for ch in text:
        cur += ch
        if ch in seps:
            pieces.append(cur)
            cur = ""
    if cur:
        pieces.append(cur)
    lines, line = [], ""

    def room():                          # continuation lines lose two to the indent
        return width - (2 if lines else 0)

    for piece in pieces:
        if line and len(line) + len(piece.rstrip()) > room():
            lines.append(line.rstrip())
            line = ""
        while not line and len(piece.rstrip()) > room():   # too long for any line: fold
            n = room()
            lines.append(piece[:n])
            piece = piece[n:]
        line += piece
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return [ln if i == 0 else "  " + ln for i, ln in enumerate(lines)]


@dataclass
class Column:
    header: str
    width: int
    right: bool = False
    gap: int = 2            # spaces before this column


class LineTable:
    """Fixed-width columns; ``format_row`` turns one row (cells: str or list of
    lines) into text lines.  A column of width 0 is free: never padded."""

    def __init__(self, columns: list[Column]):
        self.columns = columns

    def _line(self, cells: list[str]) -> str:
        out = ""
        for i, (col, cell) in enumerate(zip(self.columns, cells)):
            if i:
                out += " " * col.gap
            if col.width == 0:
                out += cell
            else:
                out += cell.rjust(col.width) if col.right else cell.ljust(col.width)
        return out.rstrip()

    def header(self) -> list[str]:
        """The column names, under a line naming groups of columns when
        ``self.groups`` ({first column index: name}) is set."""
        names = self._line([c.header for c in self.columns])
        groups = getattr(self, "groups", None)
        if not groups:
            return [names]
        starts, pos = [], 0
        for i, col in enumerate(self.columns):
            pos += col.gap if i else 0
            starts.append(pos)
            pos += col.width
        line = ""
        for i, name in sorted(groups.items()):
            line = line.ljust(starts[i]) + name + " "
        return [line.rstrip(), names]

    def format_row(self, cells) -> list[str]:
        wrapped = []
        for col, cell in zip(self.columns, cells):
            lines = cell if isinstance(cell, list) else [cell]
            if col.width:
                lines = [part for ln in lines for part in
                         (wrap(ln, col.width) if len(ln) > col.width else [ln])]
            wrapped.append(lines)
        height = max(len(w) for w in wrapped)
        return [self._line([w[i] if i < len(w) else "" for w in wrapped])
                for i in range(height)]


# --- the benchmark table --------------------------------------------------------

def target_label(key: str) -> str:
    if key == "vs_limit":
        return "limit"
    if key.startswith("vs_"):
        return "×" + key[3:]
    if key.startswith("vs:"):
        return "×" + key[3:]
    return key[4:] if key.startswith("max:") else key


def _condition(check: dict) -> str:
    return f"{'<=' if check['at_most'] else '>='} {fmt_goal(check['goal'])}"


def target_text(check: dict) -> str:
    return f"{target_label(check['key'])} {_condition(check)}"


def target_lines(check: dict, width: int) -> list[str]:
    """The target in ``width`` columns; the condition ('>= 3') is never split."""
    text = target_text(check)
    if len(text) <= width:
        return [text]
    lines = wrap(target_label(check["key"]), width, "/ +")
    cond = _condition(check)
    if len(lines[-1]) + 1 + len(cond) <= width:
        lines[-1] += " " + cond
    else:
        lines.append("  " + cond)
    return lines


def result_text(check: dict) -> str:
    if check["met"] is None:
        return "n/a"
    return f"{fmt_ratio(check['got'])} {'met' if check['met'] else 'missed'}"


def _target_texts(cases) -> list[str]:
    out = []
    for c in cases:
        for per_backend in c.targets.values():
            for key, goal in per_backend.items():
                at_most = key == "vs_limit" or key.startswith("max:")
                out.append(target_text({"key": key, "goal": goal, "at_most": at_most}))
    return out


def compact_table(width: int, cases) -> LineTable:
    """case | median | ×numpy | ×torch | target | result, fitted to ``width``:
    the case and target columns share what the others leave."""
    fixed = [Column("median", 7, True), Column("×numpy", 6, True, 1),
             Column("×torch", 6, True, 1)]
    result = Column("result", 11)
    rest = width - sum(c.width + c.gap for c in fixed) - result.width - result.gap - 2
    longest = max((len(c.name) for c in cases), default=4)
    longest_t = max((len(t) for t in _target_texts(cases)), default=6)
    target_w = min(longest_t, max(18, rest - longest))
    case_w = max(16, min(longest, rest - target_w))
    target_w = max(6, min(longest_t, rest - case_w))
    return LineTable([Column("case", case_w, gap=0), *fixed, Column("target", target_w),
                      result])


def main_rows(rows, fastdl_backends, reference):
    """The rows the compact view shows: the fastdl backends other than the
    reference, or the reference when it is all that ran."""
    mine = [r for r in rows if r.backend in fastdl_backends and r.backend != reference]
    return mine or [r for r in rows if r.backend == reference]


def compact_lines(table: LineTable, rows, fastdl_backends, reference, first) -> list[str]:
    out = []
    for r in main_rows(rows, fastdl_backends, reference):
        name = wrap(r.case, table.columns[0].width)
        if r.backend != first:
            name.append(f"  on {r.backend}")
        # a target that wraps gets its result on its first line
        t_lines, r_lines = [], []
        for check in r.checks:
            parts = target_lines(check, table.columns[4].width)
            t_lines += parts
            r_lines += [result_text(check)] + [""] * (len(parts) - 1)
        out += table.format_row([name, fmt_time(r.median_s), fmt_ratio(r.vs_numpy),
                                 fmt_ratio(r.vs_torch), t_lines, r_lines])
    return out


def _targets_width(cases) -> int:
    """Widest 'targets' cell the cases can produce (a result is at most 12 characters)."""
    def text(key, goal):
        at_most = key == "vs_limit" or key.startswith("max:")
        return target_text({"key": key, "goal": goal, "at_most": at_most}) + ": 00000 missed"
    widths = [len("; ".join(text(k, g) for k, g in per_backend.items()))
              for c in cases for per_backend in c.targets.values()]
    return max([7, *widths])


def wide_table(cases, backends: list[str]) -> LineTable:
    """Every column, one line per case and backend; as wide as its content."""
    return LineTable([
        Column("case", max(len(c.name) for c in cases), gap=0),
        Column("backend", max(7, max(len(b) for b in backends))),
        Column("median", 8, True), Column("GB/s", 6, True), Column("×numpy", 6, True),
        Column("×torch", 6, True), Column("÷limit", 6, True), Column("limit", 18),
        Column("targets", _targets_width(cases)), Column("other", 0)])


def wide_lines(table: LineTable, rows) -> list[str]:
    out = []
    for r in rows:
        targets = "; ".join(f"{target_text(c)}: {result_text(c)}" for c in r.checks)
        other = "; ".join([f"vs {k} {fmt_ratio(v)}" for k, v in r.vs_peers.items()]
                          + [f"{k} {v:.3g}" for k, v in r.metrics.items()])
        limit = f"{fmt_time(r.limit_s)} {r.limit_kind}" if r.limit_kind else "-"
        out += table.format_row([r.case, r.backend, fmt_time(r.median_s), f"{r.gbps:.3g}",
                                 fmt_ratio(r.vs_numpy), fmt_ratio(r.vs_torch),
                                 fmt_ratio(r.vs_limit), limit, targets or "-", other])
    return out


# --- the contention table -------------------------------------------------------

def contention_table(width: int, names: list[str], wide: bool) -> LineTable:
    """case | fastdl: busy, goal, idle | torch: busy, idle (| the four fastdl times)."""
    cols = [Column("busy", 6, True), Column("goal", 6, False, 1), Column("idle", 6, True, 1),
            Column("busy", 6, True, 3), Column("idle", 6, True, 1)]
    if wide:
        cols += [Column(h, 9, True, 2 if i else 3) for i, h in
                 enumerate(("busy dflt", "busy 1", "idle dflt", "idle 1"))]
        case_w = max(len(n) for n in names)
    else:
        rest = width - sum(c.width + c.gap for c in cols)
        case_w = max(16, min(max(len(n) for n in names), rest))
    table = LineTable([Column("case", case_w, gap=0), *cols])
    groups = {1: "fastdl", 4: "torch"}
    if wide:
        groups[6] = "fastdl times"
    table.groups = groups
    return table


def contention_lines(table: LineTable, row) -> list[str]:
    def ratio(pair):
        return "-" if pair is None else fmt_ratio(pair.ratio)

    goal = ("met" if row.met else "missed") + ("" if row.busy_held else "?")
    cells = [wrap(row.case, table.columns[0].width), ratio(row.fastdl_busy), goal,
             ratio(row.fastdl_idle), ratio(row.torch_busy), ratio(row.torch_idle)]
    if len(table.columns) > 6:
        cells += [fmt_time(t) for t in (row.fastdl_busy.default_s, row.fastdl_busy.one_s,
                                        row.fastdl_idle.default_s, row.fastdl_idle.one_s)]
    return table.format_row(cells)
