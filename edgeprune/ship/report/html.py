"""report.html: one self-contained page (inline CSS, figures as base64 PNG, no scripts, no links).

Nothing in the page points outside it, so it opens the same from a file, a mail attachment or
an air-gapped machine; the tests render it in headless Chromium.

It fits a 1280 px window whatever the model: tensor and layer names (sections.Name) show
edgeprune.quantize.inspection.display_name with the full name as the cell's tooltip (report.json and
``inspect --json`` hold it too), anything else long wraps (``overflow-wrap:anywhere``), tables
are at most the page wide and figures scale down. Each <figure> carries the chart's measured
``data-bars`` and ``data-label-overlaps`` (edgeprune.ship.report.plots).
"""
from __future__ import annotations

import base64
import html as _html

from edgeprune.ship.report import sections

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#1f2328;padding:0 1em}
h1{font-size:1.6em;border-bottom:1px solid #d0d7de;padding-bottom:.3em}
h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #eaeef2;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em;max-width:100%}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f6f8fa}
tr:nth-child(even) td{background:#fbfcfd}
figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #eaeef2}
figcaption{font-size:.85em;color:#59636e}
code,td{font-family:ui-monospace,Menlo,Consolas,monospace}
td[title]{text-decoration:underline dotted #8c959f}
p,figcaption,nav{overflow-wrap:anywhere}
nav{font-size:.9em}
"""


def _e(value) -> str:
    return _html.escape("" if value is None else str(value), quote=True)


def _cell(value) -> str:
    """A table cell; a name too long for it shows shortened, its full text in the tooltip."""
    if isinstance(value, sections.Name):
        from edgeprune.quantize.inspection import display_name

        short = display_name(value.full)
        if short != value.full:
            return f'<td title="{_e(value.full)}">{_e(short)}</td>'
    return f"<td>{_e(value)}</td>"


def render(data) -> str:
    figures = {f.key: f for f in data.figures}
    secs = sections.build(data)
    name = (data.manifest.get("profile") or {}).get("name", "")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>edgeprune report {_e(name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>edgeprune compile report{(' · ' + _e(name)) if name else ''}</h1>",
             "<nav>" + " · ".join(f'<a href="#s{i}">{_e(h)}</a>' for i, (h, _) in enumerate(secs)) + "</nav>"]
    for i, (heading, blocks) in enumerate(secs):
        parts.append(f'<section id="s{i}"><h2>{_e(heading)}</h2>')
        for block in blocks:
            kind = block[0]
            if kind == "text" and block[1]:
                parts.append(f"<p>{_e(block[1])}</p>")
            elif kind == "figure" and block[1] in figures:
                fig = figures[block[1]]
                b64 = base64.b64encode(fig.png).decode("ascii")
                facts = "".join(f' data-{k.replace("_", "-")}="{_e(v)}"' for k, v in fig.layout.items())
                parts.append(f'<figure{facts}><img alt="{_e(fig.title)}" src="data:image/png;base64,{b64}">'
                             f"<figcaption>{_e(fig.title)}</figcaption></figure>")
            elif kind == "table":
                columns, rows = block[1], block[2]
                head = "".join(f"<th>{_e(c)}</th>" for c in columns) if any(columns) else ""
                body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
                parts.append(f"<table>{'<tr>' + head + '</tr>' if head else ''}{body}</table>")
        parts.append("</section>")
    parts.append("<p><small>Written by edgeprune from report.json, manifest.json and model.tflite; "
                 "report.json is the source of truth.</small></p></body></html>")
    return "\n".join(parts) + "\n"
