"""report.md: the same sections as report.html, with the figures as PNG files beside it."""
from __future__ import annotations

from edgeprune.ship.report import sections


def _cell(value) -> str:
    if isinstance(value, sections.Name):  # shortened as on the page; report.json has the full name
        from edgeprune.quantize.inspection import display_name

        value = display_name(value.full)
    return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")


def render(data, assets: str) -> str:
    figures = {f.key: f for f in data.figures}
    name = (data.manifest.get("profile") or {}).get("name", "")
    lines = [f"# edgeprune compile report{(' · ' + name) if name else ''}", ""]
    for heading, blocks in sections.build(data):
        lines += [f"## {heading}", ""]
        for block in blocks:
            kind = block[0]
            if kind == "text" and block[1]:
                lines += [block[1], ""]
            elif kind == "figure" and block[1] in figures:
                lines += [f"![{figures[block[1]].title}]({assets}/{block[1]}.png)", ""]
            elif kind == "table":
                columns, rows = block[1], block[2]
                cols = [c or " " for c in columns]
                lines.append("| " + " | ".join(_cell(c) for c in cols) + " |")
                lines.append("|" + "---|" * len(cols))
                lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
    return "\n".join(lines)
