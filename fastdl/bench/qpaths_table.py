"""The side-by-side table of the ``quant/path/...`` cases: one block per weight format
and row count, one line per ``qmatmul`` path, every ratio from that path's own
rounds (its peers were timed beside it)."""
from __future__ import annotations

from fastdl.bench.table import Column, LineTable, fmt_ratio, fmt_time

PREFIX = "quant/path/"
_COLUMNS = (("median", None), ("×np f32", "numpy x@W f32"), ("×torch f32", "torch"),
            ("×torch int8", "torch int8 dynamic"), ("×bnb", "bnb 4bit"),
            ("×exact", "exact"), ("÷limit", "limit"))


def path_rows(rows, backend: str) -> list:
    return [r for r in rows if r.case.startswith(PREFIX) and r.backend == backend]


def _cell(r, key):
    if key == "torch":
        return fmt_ratio(r.vs_torch)
    if key == "limit":
        return fmt_ratio(r.vs_limit)
    return fmt_ratio(r.vs_peers.get(key))


def lines(rows, backend: str) -> list[str]:
    """Text lines (empty when no path case ran on ``backend``)."""
    mine = path_rows(rows, backend)
    if not mine:
        return []
    table = LineTable([Column("format", 10, gap=0), Column("n", 4, True), Column("path", 5)]
                      + [Column(h, max(7, len(h)), True) for h, _ in _COLUMNS]
                      + [Column("err vs f64", 10, True), Column("bits", 5, True)])
    out = [f"qmatmul paths side by side ({backend} backend; ×: the peer's time / the path's "
           "time, above 1 faster; ÷limit: the path's time / a plain read of the packed "
           "bytes; err: max|y - y64| / max|y64|):"]
    out += table.header()
    last = None
    for r in mine:                         # the order the cases ran: format, n, path
        key = (r.params["format"], r.params["n"])
        fmt, n = (r.params["format"], str(r.params["n"])) if key != last else ("", "")
        last = key
        err = r.metrics.get("err")
        cells = [fmt, n, r.params["path"], fmt_time(r.median_s)]
        cells += [_cell(r, k) for _, k in _COLUMNS[1:]]
        cells += ["-" if err is None else f"{err:.2e}",
                  f"{r.metrics['bits/param']:.2f}" if "bits/param" in r.metrics else "-"]
        out += table.format_row(cells)
    return out
