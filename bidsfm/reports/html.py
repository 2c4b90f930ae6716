"""Static HTML building blocks: escaped text, tables, embedded PNG images, the page shell.

Pages are self-contained (inline CSS, images as ``data:image/png;base64`` URIs, no scripts,
no external fonts) so that a report opens offline, from a cluster, or attached to an e-mail.
Every piece of text that comes from a file is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..utils import atomic_path

CSS = """
:root { --fg: #1d2530; --muted: #5b6573; --line: #d9dee5; --accent: #2b5d8a;
        --ok: #1e7b45; --warn: #9a5b00; --bad: #b3261e; --bg-note: #f4f6f9; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial,
       sans-serif; color: var(--fg); margin: 0; background: #fff; }
header.top { background: #203246; color: #fff; padding: 18px 32px; }
header.top h1 { margin: 0; font-size: 24px; font-weight: 600; }
header.top p { margin: 4px 0 0; color: #c9d4e0; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 32px 48px; }
nav.toc { font-size: 13px; margin: 14px 0; color: var(--muted); }
nav.toc a { margin-right: 12px; }
h2 { font-size: 20px; border-bottom: 2px solid var(--line); padding-bottom: 4px;
     margin-top: 34px; }
h3 { font-size: 16px; margin: 22px 0 8px; color: var(--accent); }
h4 { font-size: 14px; margin: 14px 0 6px; }
a { color: var(--accent); }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left;
         vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { background: none; font-weight: 500; color: var(--muted); white-space: nowrap; }
table.kv td { overflow-wrap: anywhere; }
ul.failures { margin: 4px 0 10px; }
.status-ok { color: var(--ok); font-weight: 600; }
.status-reused { color: var(--ok); font-weight: 600; }
.status-skipped, .status-incomplete, .status-missing { color: var(--warn); font-weight: 600; }
.status-error { color: var(--bad); font-weight: 600; }
.note { background: var(--bg-note); border-left: 4px solid var(--accent); padding: 8px 12px;
        margin: 10px 0; font-size: 14px; }
.note.warn { border-left-color: var(--warn); background: #fff7e8; }
.note.bad { border-left-color: var(--bad); background: #fdeeee; }
figure { margin: 10px 0 18px; display: table; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); display: block; }
figcaption { font-size: 13px; color: var(--muted); padding-top: 4px; display: table-caption;
             caption-side: bottom; }
.grid { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.grid > figure, .grid > div { flex: 0 1 auto; }
table.kv { max-width: 560px; }
section.run { border-top: 1px solid var(--line); margin-top: 26px; }
footer { color: var(--muted); font-size: 12px; border-top: 1px solid var(--line);
         margin-top: 40px; padding-top: 10px; }
code { font-size: 12.5px; background: #f1f3f6; padding: 1px 4px; border-radius: 3px; }
"""


def esc(value: Any) -> str:
    """Escape any value for HTML text or attribute content."""
    return html.escape("" if value is None else str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Format a table cell: ``n/a`` for missing, ``digits`` significant digits for floats."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        f = float(value)
        if math.isnan(f):
            return "n/a"
        if f == int(f) and abs(f) < 1e6:
            return str(int(f))
        return f"{f:.{digits}g}"
    text = str(value)
    return "n/a" if text in ("", "nan", "NaN") else text


def _is_number(value: Any) -> bool:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool) and not math.isnan(f) and str(value) not in ("", "n/a")


def status_span(status: Any) -> str:
    """A coloured status word (ok, reused, skipped, error, incomplete, missing)."""
    text = fmt(status)
    key = text if text in ("ok", "reused", "skipped", "error", "incomplete", "missing") else ""
    cls = f' class="status-{key}"' if key else ""
    return f"<span{cls}>{esc(text)}</span>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
          raw_columns: Sequence[int] = (), css_class: str = "") -> str:
    """An HTML table; cells are formatted with :func:`fmt` and escaped.

    Parameters
    ----------
    header : sequence of str
        Column titles.
    rows : iterable of sequences
        Cell values.
    raw_columns : sequence of int
        Indices of columns whose cells are already HTML (e.g. :func:`status_span`).
    css_class : str
        Class attribute of the table.
    """
    cls = f' class="{esc(css_class)}"' if css_class else ""
    out = [f"<table{cls}><thead><tr>"]
    out += [f"<th>{esc(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            if i in raw_columns:
                out.append(f"<td>{cell}</td>")
            elif _is_number(cell):
                out.append(f'<td class="num">{esc(fmt(cell))}</td>')
            else:
                out.append(f"<td>{esc(fmt(cell))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def kv_table(pairs: Iterable[tuple[str, Any]], raw_keys: Sequence[str] = ()) -> str:
    """A two-column key/value table (values escaped unless their key is in ``raw_keys``)."""
    rows = []
    for key, value in pairs:
        cell = value if key in raw_keys else esc(fmt(value))
        rows.append(f"<tr><th>{esc(key)}</th><td>{cell}</td></tr>")
    return '<table class="kv"><tbody>' + "".join(rows) + "</tbody></table>"


def note(text: str, kind: str = "info") -> str:
    """A highlighted paragraph (``kind``: ``info``, ``warn`` or ``bad``); ``text`` is escaped."""
    cls = "note" if kind == "info" else f"note {kind}"
    return f'<p class="{cls}">{esc(text)}</p>'


def png_uri(png: bytes) -> str:
    """A ``data:image/png;base64`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str, caption: str = "", width: int | None = None) -> str:
    """A ``<figure>`` with an embedded PNG and an escaped caption."""
    size = f' style="width:{int(width)}px"' if width else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (f'<figure><img src="{png_uri(png)}" alt="{esc(alt)}"{size}>{cap}</figure>')


def figure_file(path: Path, alt: str, caption: str = "", width: int | None = None) -> str:
    """Embed an existing PNG file; a note instead when it cannot be read or is not a PNG."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return note(f"{path}: cannot read the figure ({exc.strerror or exc}).", "warn")
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return note(f"{path}: not a PNG file; figure not shown.", "warn")
    return figure(data, alt, caption, width)


def section(title: str, body: str, anchor: str = "", level: int = 2,
            css_class: str = "") -> str:
    """A titled ``<section>``; ``body`` is HTML."""
    ident = f' id="{esc(anchor)}"' if anchor else ""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<section{ident}{cls}><h{level}>{esc(title)}</h{level}>{body}</section>"


def page(title: str, subtitle: str, body: str, toc: Sequence[tuple[str, str]] = ()) -> str:
    """A complete HTML5 document with the report CSS.

    Parameters
    ----------
    title, subtitle : str
        Heading and the line under it (escaped).
    body : str
        HTML of the main content.
    toc : sequence of (anchor, label)
        Links shown under the heading.
    """
    nav = ""
    if toc:
        links = "".join(f'<a href="#{esc(a)}">{esc(label)}</a>' for a, label in toc)
        nav = f'<nav class="toc">{links}</nav>'
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"bidsfm {esc(__version__)}\">\n"
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header class=\"top\"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n"
        f"<main>{nav}\n{body}\n"
        f"<footer>Generated by bidsfm {esc(__version__)} on {esc(stamp)}. Static page: every "
        "figure is embedded, nothing is loaded from the network.</footer>\n"
        "</main>\n</body>\n</html>\n")


def write_page(path: Path, text: str) -> Path:
    """Write an HTML page atomically (temporary file, then rename), UTF-8 encoded."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
