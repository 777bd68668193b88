"""``edgeprune targets list|show``: the device profiles."""
from __future__ import annotations

import click

from edgeprune.cli import cli, get_output, json_option
from edgeprune.profiles import list_profiles, load_profile


@cli.group()
def targets() -> None:
    """List and inspect device profiles."""


@targets.command("list")
@json_option
@click.pass_context
def targets_list(ctx: click.Context, json_mode: bool) -> None:
    """List the bundled device profiles."""
    out = get_output(ctx, json_mode)
    profiles = list_profiles()
    out.emit_json([p.model_dump(mode="json") for p in profiles])
    out.table(
        "Device profiles",
        ["name", "cpu", "threads", "default quant", "runtime", "reach", "description"],
        [
            (p.name, p.cpu, p.threads, p.quantization.default.value, p.operators.runtime,
             p.connection.kind if p.connection.kind == "local" else f"ssh {p.connection.host}",
             p.description)
            for p in profiles
        ],
    )


@targets.command("show")
@click.argument("name")
@json_option
@click.pass_context
def targets_show(ctx: click.Context, name: str, json_mode: bool) -> None:
    """Show one profile (bundled NAME or a path to a YAML file)."""
    out = get_output(ctx, json_mode)
    profile = load_profile(name)
    data = profile.model_dump(mode="json")
    out.emit_json(data)
    if not out.json_mode:
        import yaml

        out.console.print(yaml.safe_dump(data, sort_keys=False).rstrip())
