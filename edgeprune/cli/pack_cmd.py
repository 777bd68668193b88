"""``edgeprune pack DIR -o BUNDLE.tar.gz`` and ``edgeprune unpack BUNDLE -o DIR``."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import cli, get_output, json_option


@cli.command("pack")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Bundle to write (.tar.gz).")
@click.option("--force", is_flag=True, help="Replace the bundle if it exists.")
@json_option
@click.pass_context
def pack_command(ctx: click.Context, directory: Path, output: Path, force: bool, json_mode: bool) -> None:
    """Bundle an artifact directory: model, manifest, labels, reports and the reference sample."""
    from edgeprune.ship.bundle import pack

    out = get_output(ctx, json_mode)
    result = pack(directory, output, force=force)
    out.emit_json(result)
    if not out.json_mode:
        out.info(f"wrote {result['bundle']} ({result['bytes']:,} bytes, {len(result['files'])} files)")


@cli.command("unpack")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", "output", type=click.Path(path_type=Path), required=True,
              help="Directory to create.")
@click.option("--force", is_flag=True, help="Replace the directory if it exists.")
@json_option
@click.pass_context
def unpack_command(ctx: click.Context, bundle: Path, output: Path, force: bool, json_mode: bool) -> None:
    """Extract a bundle into DIR. Absolute paths, '..', links and device files are refused (exit 2)
    before anything is written; DIR appears whole or not at all. Then run `edgeprune verify DIR`."""
    from edgeprune.ship.bundle import unpack

    out = get_output(ctx, json_mode)
    result = unpack(bundle, output, force=force)
    out.emit_json(result)
    if not out.json_mode:
        out.info(f"unpacked {len(result['files'])} files into {result['output_dir']}")
