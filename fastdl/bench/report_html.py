"""``fastdl bench --plot DIR``'s ``DIR/index.html``: every figure and table on one page.

The page is a single file that needs neither a server nor JavaScript: the
figures are embedded as base64 ``data:`` URIs, so ``index.html`` still shows
them after it is copied, mailed or attached on its own; the PNG files stay
beside it (each caption links to its file, for full size).  Every text that
goes into the page is HTML-escaped.

A section is a dict::

    {"title": str, "text": str (plain paragraphs, separated by blank lines),
     "images": [paths of .png/.svg/.jpg files],
     "table": {"columns": [str, ...], "rows": [[cell, ...], ...]} or None}

A cell is a str or a number, ``None`` (shown as "-"), a dict
``{"text": str, "status": "met" | "missed" | "n/a"}`` (coloured), or a list of
these (one per line).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import platform

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
         ".jpeg": "image/jpeg"}
_STATUS = ("met", "missed", "n/a")
_SECTION_KEYS = {"title", "text", "images", "table"}

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
 margin:0 auto;padding:1.2em 2em 3em;max-width:1200px;background:#fff}
h1{font-size:1.6em;margin:.2em 0 .4em}
h2{font-size:1.25em;margin:2em 0 .5em;padding-top:.6em;border-top:1px solid #d0d7de}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1em;margin:0 0 1em;
 padding:.7em 1em;background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px}
header dt{font-weight:600;color:#57606a}
header dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em}
nav ol{columns:2;margin:.3em 0 0;padding-left:1.4em}
p{margin:.4em 0 .7em;max-width:75em}
figure{margin:1em 0}
figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:.85em;color:#57606a}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.86em;margin:.6em 0 1em}
th,td{padding:.25em .6em;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
th{background:#f6f8fa;border-bottom:2px solid #d0d7de;position:sticky;top:0}
td{font-variant-numeric:tabular-nums}
td.num{text-align:right;white-space:nowrap}
th{white-space:nowrap}
td.name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em;word-break:break-all}
tbody tr:nth-child(even){background:#fafbfc}
.met{color:#1a7f37}.missed{color:#cf222e;font-weight:600}.n\\/a{color:#8c959f}
"""

_HEADER_KEYS = (("version", "fastdl"), ("cpu", "CPU"), ("num_threads", "threads"),
                ("simd_active", "SIMD level"), ("openmp", "OpenMP"), ("numpy", "NumPy"),
                ("numpy_blas", "NumPy's BLAS"), ("platform", "platform"))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def _check_section(i: int, s) -> None:
    where = f"sections[{i}]"
    if not isinstance(s, dict):
        raise TypeError(f"{where}: expected a dict with keys {sorted(_SECTION_KEYS)}, "
                        f"got {type(s).__name__}")
    if set(s) != _SECTION_KEYS:
        raise ValueError(f"{where}: expected the keys {sorted(_SECTION_KEYS)}, got {sorted(s)}")
    for key in ("title", "text"):
        if not isinstance(s[key], str):
            raise TypeError(f"{where}[{key!r}]: expected a str, got {type(s[key]).__name__}")
    if not isinstance(s["images"], (list, tuple)):
        raise TypeError(f"{where}['images']: expected a list of paths, got "
                        f"{type(s['images']).__name__}")
    for path in s["images"]:
        ext = os.path.splitext(os.fspath(path))[1].lower()
        if ext not in _MIME:
            raise ValueError(f"{where}['images']: expected {', '.join(_MIME)} files, "
                             f"got {os.fspath(path)!r}")
        if not os.path.isfile(path):
            raise ValueError(f"{where}['images']: no such file {os.fspath(path)!r}")
    table = s["table"]
    if table is None:
        return
    if not isinstance(table, dict) or set(table) != {"columns", "rows"}:
        raise ValueError(f"{where}['table']: expected None or a dict with keys "
                         f"['columns', 'rows'], got {table!r:.80}")
    ncol = len(table["columns"])
    for j, row in enumerate(table["rows"]):
        if not isinstance(row, (list, tuple)) or len(row) != ncol:
            raise ValueError(f"{where}['table']['rows'][{j}]: expected a list of {ncol} "
                             f"cells (one per column), got {row!r:.80}")


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell_html(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "<br>".join(_cell_html(x) for x in v)
    if isinstance(v, dict):
        status = v.get("status")
        if set(v) - {"text", "status"} or "text" not in v or status not in (None, *_STATUS):
            raise ValueError(f"table cell: expected {{'text': str, 'status': one of "
                             f"{_STATUS}}}, got {v!r:.80}")
        text = _esc(v["text"])
        return f'<span class="{_esc(status)}">{text}</span>' if status else text
    if isinstance(v, float):
        return _esc(f"{v:.4g}")
    return _esc(v)


def _looks_numeric(v) -> bool:
    if _is_num(v):
        return True
    text = v.get("text", "") if isinstance(v, dict) else v
    # figures formatted as text ("1.23", "4.5 ms", "1.36 (copy)") align as numbers too
    return isinstance(text, str) and bool(text) and text[0].isdigit() and len(text) < 16


def _numeric_columns(table) -> list[bool]:
    """A column is right-aligned when every cell that is not "-" or empty is a figure."""
    out = []
    for j in range(len(table["columns"])):
        cells = [row[j] for row in table["rows"] if row[j] not in (None, "-", "")]
        out.append(bool(cells) and all(_looks_numeric(v) for v in cells))
    return out


def _table_html(table) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in table["columns"])
    numeric = _numeric_columns(table)
    body = []
    for row in table["rows"]:
        cells = []
        for j, v in enumerate(row):
            cls = "num" if numeric[j] else ("name" if j == 0 else "")
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{_cell_html(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


def _image_html(path, out_dir: str) -> str:
    path = os.fspath(path)
    mime = _MIME[os.path.splitext(path)[1].lower()]
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    name = os.path.basename(path)
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))
    # link the file only where it lies under out_dir: a link that climbs out breaks
    # as soon as the folder is moved
    caption = (f'<a href="{_esc(rel.replace(os.sep, "/"))}">{_esc(name)}</a>'
               if not rel.startswith("..") else _esc(name))
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{_esc(name)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _paragraphs(text: str) -> str:
    paras = [" ".join(p.split()) for p in text.split("\n\n")]
    return "\n".join(f"<p>{_esc(p)}</p>" for p in paras if p)


def _header_html(title: str, build_info: dict, date: str) -> str:
    info = dict(build_info)
    info.setdefault("cpu", cpu_name())
    items = [("date", date)]
    items += [(label, info[key]) for key, label in _HEADER_KEYS if info.get(key) is not None]
    dl = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items)
    return f"<header><h1>{_esc(title)}</h1><dl>{dl}</dl></header>"


def write_index(out_dir, *, title: str, build_info: dict, sections: list) -> str:
    """Write ``out_dir/index.html`` (the title, a header with ``build_info`` and the
    date, a contents list, then each section's text, figures and table); returns
    its path.  ``build_info`` is ``fastdl.build_info()``'s dict (the keys shown
    are the version, ``cpu`` (read from the machine when absent), ``num_threads``,
    ``simd_active``, ``openmp``, ``numpy``, ``numpy_blas`` and ``platform``)."""
    if not isinstance(title, str):
        raise TypeError(f"title: expected a str, got {type(title).__name__}")
    if not isinstance(build_info, dict):
        raise TypeError(f"build_info: expected a dict (fastdl.build_info()), got "
                        f"{type(build_info).__name__}")
    if not isinstance(sections, (list, tuple)):
        raise TypeError(f"sections: expected a list of dicts, got {type(sections).__name__}")
    for i, s in enumerate(sections):
        _check_section(i, s)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
             _header_html(title, build_info, date)]
    if len(sections) > 1:
        toc = "".join(f'<li><a href="#s{i}">{_esc(s["title"])}</a></li>'
                      for i, s in enumerate(sections))
        parts.append(f"<nav><ol>{toc}</ol></nav>")
    for i, s in enumerate(sections):
        parts.append(f'<section id="s{i}"><h2>{_esc(s["title"])}</h2>')
        parts.append(_paragraphs(s["text"]))
        parts += [_image_html(p, out_dir) for p in s["images"]]
        if s["table"] is not None:
            parts.append(_table_html(s["table"]))
        parts.append("</section>")
    parts.append("</body></html>\n")
    path = os.path.join(out_dir, "index.html")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    os.replace(tmp, path)      # a reader never sees half a page
    return path


# --- the benchmark's sections ----------------------------------------------------

# op areas (a case name's first component) in page order, with their headings
AREAS = {
    "norm": "Normalization layers (forward and backward)",
    "norm_stats": "Normalization statistics",
    "decode": "Decoding kernels: top-k, beam step, beam search",
    "generate": "generate: whole searches with a model",
    "quant": "Quantization: quantize and quantized matmul",
    "lora": "LoRA and QLoRA",
    "rnn": "Bidirectional RNN",
}

RESULT_COLUMNS = ["case", "time", "×numpy", "×torch", "÷limit", "other peers", "targets"]

_READ = ("×numpy, ×torch and ×peer: their time / this time (above 1: faster). "
         "÷limit: this time / the time of the memory or BLAS limit it is measured against "
         "(a plain read or copy of the same bytes, or the plain matrix product; 1 = at the "
         "limit), the limit's kind in brackets. The bars draw the same ratios from 1 on a log "
         "scale, every one the way round where right of 1 means faster: the limit's bar is "
         "1/÷limit.")


def area_of(case_name: str) -> str:
    return case_name.split("/", 1)[0]


def _shown_rows(rows, backend: str) -> list:
    """Per case, in run order: ``backend``'s row, else the reference (NumPy)
    backend's (when ``backend`` did not run that case)."""
    from fastdl import registry
    by_case: dict[str, dict] = {}
    for r in rows:
        by_case.setdefault(r.case, {})[r.backend] = r
    out = []
    for per in by_case.values():
        r = per.get(backend) or per.get(registry.REFERENCE)
        if r is not None:
            out.append(r)
    return out


def _target_cells(row) -> list:
    from fastdl.bench.table import result_text, target_text
    return [{"text": f"{target_text(c)}: {result_text(c)}",
             "status": {True: "met", False: "missed", None: "n/a"}[c["met"]]}
            for c in row.checks]


def result_row(row, backend: str) -> list:
    """One line of the results table for a benchmark row (rows of another backend
    than ``backend`` say so beside the case)."""
    from fastdl.bench.table import fmt_ratio, fmt_time
    limit = (f"{fmt_ratio(row.vs_limit)} ({row.limit_kind})" if row.vs_limit is not None
             else "-")
    peers = [f"×{k} {fmt_ratio(v)}" for k, v in row.vs_peers.items()]
    name = row.case if row.backend == backend else f"{row.case} (on {row.backend})"
    return [name, fmt_time(row.median_s), fmt_ratio(row.vs_numpy), fmt_ratio(row.vs_torch),
            limit, peers or "-", _target_cells(row) or "-"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _counts(rows) -> tuple[int, int, int]:
    checks = [c["met"] for r in rows for c in r.checks]
    return checks.count(True), checks.count(False), checks.count(None)


def bench_sections(rows, out_dir, backend: str) -> list[dict]:
    """Sections for :func:`write_index` from ``fastdl bench``'s rows: a summary
    (targets met and missed per op area), then per op area a bar chart
    (``out_dir/bars_<area>.png``: each case's ratio to every peer and to the
    memory/BLAS limit) and its results table.  ``backend`` is the fastdl backend
    the page is about (its rows are shown; the NumPy backend's where it did not
    run a case).  Needs matplotlib (``pip install 'fastdl[plot]'``)."""
    from fastdl._plot import pyplot
    from fastdl.bench.report_plots import peer_limit_bars
    pyplot()                            # a missing extra fails before anything is written
    rows = list(rows)
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a backend name (str), got {type(backend).__name__}")
    shown = _shown_rows(rows, backend)
    if not shown:
        raise ValueError(f"rows: expected benchmark rows of backend {backend!r} or of the "
                         f"NumPy backend, got {len(rows)} rows of neither")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    areas: dict[str, list] = {}
    for r in shown:
        areas.setdefault(area_of(r.case), []).append(r)
    order = [a for a in AREAS if a in areas] + [a for a in areas if a not in AREAS]
    summary = []
    for a in order:
        met, missed, na = _counts(areas[a])
        summary.append([a, len(areas[a]), {"text": str(met), "status": "met"},
                        {"text": str(missed), "status": "missed" if missed else None},
                        {"text": str(na), "status": "n/a"}])
    met, missed, na = _counts(shown)
    sections = [{
        "title": "Summary",
        "text": (f"The {backend} backend over {_plural(len(shown), 'benchmark case')}: {met} targets "
                 f"met, {missed} missed, {na} not measurable here (a peer not installed). "
                 "Each op area below has a bar chart and its table.\n\n" + _READ),
        "images": [], "table": {"columns": ["op area", "cases", "targets met", "missed",
                                            "n/a"], "rows": summary}}]
    for a in order:
        title = AREAS.get(a, a)
        png = peer_limit_bars(areas[a], os.path.join(out_dir, f"bars_{a}.png"),
                              title=f"{title}: {backend} against each peer and the limit",
                              strip=a + "/")
        met, missed, na = _counts(areas[a])
        sections.append({
            "title": title,
            "text": (f"{_plural(len(areas[a]), 'case')}; targets: {met} met, {missed} missed, {na} n/a. "
                     "Bars right of the line at 1: faster than that peer (or, for the "
                     "limit, as fast as it); the figure at each bar's end is the ratio."),
            "images": [png],
            "table": {"columns": list(RESULT_COLUMNS),
                      "rows": [result_row(r, backend) for r in areas[a]]}})
    return sections
