"""``edgeprune report DIR``: re-render report.html and report.md from DIR/report.json."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import cli, get_output, json_option


@cli.command("report")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--bench", "bench", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A result of `edgeprune bench --json` to store in report.json (latency per device).")
@click.option("--search", "search", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A result of `edgeprune search --json` to store in report.json (Pareto plot).")
@json_option
@click.pass_context
def report_command(ctx: click.Context, directory: Path, bench, search, json_mode: bool) -> None:
    """Write DIR/report.html (self-contained, plots embedded) and DIR/report.md (+ report_files/)."""
    from edgeprune.ship.report import render_report

    out = get_output(ctx, json_mode)
    with out.progress("Rendering the report"):
        result = render_report(directory, bench=bench, search=search)
    out.emit_json(result)
    if not out.json_mode:
        out.info(f"wrote {result['html']} and {result['markdown']} ({len(result['figures'])} figures: "
                 f"{', '.join(result['figures']) or 'none'})")
