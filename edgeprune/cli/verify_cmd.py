"""``edgeprune verify DIR|BUNDLE``: hashes, load, and the reference sample stored at compile time."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import cli, get_output, json_option


@cli.command("verify")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
@click.pass_context
def verify_command(ctx: click.Context, path: Path, json_mode: bool) -> None:
    """Check an artifact directory or bundle: every sha256 in its manifest, that the artifact loads,
    and that it reproduces the outputs recorded for its reference sample. Exit 1 with what differs."""
    from edgeprune.ship.verification import verify

    out = get_output(ctx, json_mode)
    with out.progress(f"Verifying {path}"):
        result = verify(path)
    out.emit_json(result)
    if not out.json_mode:
        s = result["sample"]
        if s.get("skipped"):
            out.info(f"ok: {len(result['hashes'])} file hash(es) match; no reference sample ({s['skipped']})")
        else:
            out.info(f"ok: {len(result['hashes'])} file hash(es) match; {s['count']} reference samples reproduced "
                     f"(max abs difference {s['max_abs_diff']:.3g} ≤ {s['atol']:.3g})")
