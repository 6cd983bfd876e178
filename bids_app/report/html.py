"""HTML layout of the reports: page skeleton, tables, embedded images, notices.

Only layout lives here (figures come from :mod:`bids_app.report.figures`). Every piece of text
from data files is escaped, and images are embedded as base64 ``data:`` URIs so one report file is
self-contained: it can be mailed, archived or opened on a machine without the output directory.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["esc", "fmt", "page", "section", "table", "key_value_table", "image", "notice", "details", "pre", "badge",
           "methods_block", "nav"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1b2631; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #d5d8dc; padding-bottom: .2em; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .85em; }
th, td { border: 1px solid #d5d8dc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f2f3f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: .85em; word-break: break-all; } td code { word-break: normal; white-space: nowrap; }
.notice { padding: .6em 1em; margin: .8em 0; border-radius: 4px; border: 1px solid; }
.notice.info { background: #eaf2f8; border-color: #a9cce3; }
.notice.warn { background: #fef5e7; border-color: #f5b041; }
.notice.danger { background: #fdedec; border-color: #e6b0aa; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: .85em; color: #566573; }
footer { margin-top: 3em; font-size: .8em; color: #566573; }
.badge { display: inline-block; padding: 0 .45em; border-radius: 3px; font-size: .85em; font-weight: 600; }
.badge.pass { background: #d4efdf; color: #145a32; } .badge.fail { background: #fadbd8; color: #78281f; }
.badge.na { background: #eaecee; color: #424949; }
details { margin: .8em 0; } summary { cursor: pointer; font-weight: 600; }
pre { background: #f8f9f9; border: 1px solid #d5d8dc; padding: .6em; overflow-x: auto; font-size: .8em; }
.methods { background: #f8f9f9; border-left: 4px solid #5d6d7e; padding: .6em 1em; }
.methods p { margin: .4em 0; } .methods ol { font-size: .9em; }
nav { font-size: .9em; margin: .5em 0 1em; } nav a { margin-right: 1em; }
.muted { color: #566573; font-size: .85em; }
"""


def esc(value: Any) -> str:
    """Escaped text of ``value``."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """Readable, escaped text for a table cell: ``n/a`` for missing, floats rounded."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{digits}f}"
    try:
        import pandas as pd

        if pd.isna(value):
            return "n/a"
    except (TypeError, ValueError):
        pass
    return esc(value)


def page(title: str, body: Iterable[str], *, footer: str = "") -> str:
    """A complete HTML5 document."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n" + "\n".join(body) + f"\n<footer>{footer}</footer>\n</body>\n</html>\n"
    )


def section(title: str, *parts: str, anchor: str = "") -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}>\n<h2>{esc(title)}</h2>\n" + "\n".join(parts) + "\n</section>"


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    headers: Mapping[str, str] | None = None,
    titles: Mapping[str, str] | None = None,
    raw: Sequence[str] = (),
) -> str:
    """A table of ``rows`` (dicts) with ``columns``; ``titles`` become header tooltips, ``raw``
    names columns whose cells are already HTML (escaped by the caller)."""
    headers = headers or {}
    titles = titles or {}
    head = "".join(
        f'<th title="{esc(titles[c])}">{esc(headers.get(c, c))}</th>'
        if c in titles
        else f"<th>{esc(headers.get(c, c))}</th>"
        for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            text = str(v) if c in raw else fmt(v)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="table-wrap"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table></div>"
    )


def key_value_table(items: Mapping[str, Any]) -> str:
    """A two-column table (name, value)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{fmt(v)}</td></tr>" for k, v in items.items())
    return f"<table><tbody>{rows}</tbody></table>"


def image(png: bytes, alt: str, caption: str = "") -> str:
    """A figure with the PNG embedded as a base64 data URI."""
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def notice(text: str, kind: str = "info") -> str:
    """A highlighted paragraph; ``kind`` is info, warn or danger."""
    if kind not in ("info", "warn", "danger"):
        raise ValueError(f"notice kind must be info, warn or danger; got {kind!r}")
    return f'<div class="notice {kind}" role="note">{esc(text)}</div>'


def details(summary: str, *parts: str, open_: bool = False) -> str:
    """A folded block (``<details>``): shown on click, e.g. provenance that few readers need."""
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>\n" + "\n".join(parts) + "\n</details>"


def pre(text: str) -> str:
    """Preformatted, escaped text (e.g. a JSON sidecar)."""
    return f"<pre>{esc(text)}</pre>"


def badge(verdict: bool | None) -> str:
    """A coloured pass / fail / n/a word for a table cell (already HTML)."""
    if verdict is None:
        return '<span class="badge na">n/a</span>'
    return '<span class="badge pass">pass</span>' if verdict else '<span class="badge fail">fail</span>'


def methods_block(paragraphs: Sequence[str], references: Sequence[str]) -> str:
    """Text a researcher can paste into a paper: paragraphs, then the numbered references (escaped)."""
    body = "".join(f"<p>{esc(p)}</p>" for p in paragraphs)
    refs = "".join(f"<li>{esc(r)}</li>" for r in references)
    return f'<div class="methods" id="methods-text">{body}<p><strong>References</strong></p><ol>{refs}</ol></div>'


def nav(anchors: Sequence[tuple[str, str]]) -> str:
    """Links to the sections of the page (anchor, title)."""
    return "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in anchors) + "</nav>"
