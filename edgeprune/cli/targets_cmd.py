"""``edgeprune targets list|show``: the device profiles."""
from __future__ import annotations

import click

from edgeprune.cli import cli, get_output, json_option
from edgeprune.device.profiles import list_profiles, load_profile


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
             _reach(p.connection),
             p.description)
            for p in profiles
        ],
    )


def _reach(connection) -> str:
    if connection.kind == "ssh":
        return f"ssh {connection.host}"
    if connection.kind == "emulated":
        return f"emulated {connection.system}"
    return connection.kind


@targets.command("emulate")
@click.argument("name", type=click.Choice(["rpi4"]))
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=str),
              help="Where the emulated system lives (default: ~/.cache/edgeprune/emulated/NAME).")
@click.option("--rebuild", is_flag=True, help="Build it again even if a finished build is there.")
@click.option("--mirror", metavar="URL", help="Debian archive (default: the one apt uses on this machine).")
@json_option
@click.pass_context
def targets_emulate(ctx: click.Context, name: str, directory, rebuild: bool, mirror, json_mode: bool) -> None:
    """Prepare (once) an emulated NAME: arm64 Debian bookworm, the base of Raspberry Pi OS
    64-bit, with python3, numpy and the aarch64 LiteRT wheels, run through qemu-user-static.

    Needs root (debootstrap, chroot, binfmt_misc). Then `edgeprune bench ART --target
    rpi4-emulated` runs the artifact on the aarch64 LiteRT build over SSH, as on a real Pi.
    """
    out = get_output(ctx, json_mode)
    from edgeprune.device.emulated import prepare

    facts = prepare(name, directory, rebuild=rebuild, mirror=mirror, output=out)
    out.emit_json(facts)
    if not out.json_mode:
        if facts["reused"]:
            out.info(f"{name}: reusing the emulated system in {facts['path']} (built {facts.get('built_at')} in "
                     f"{facts.get('build_seconds', 0):.0f} s; --rebuild to build it again)")
        else:
            out.info(f"{name}: built the emulated system in {facts['path']} in {facts['build_seconds']:.0f} s")
        out.info(f"  {facts.get('machine')}, python {facts.get('python_version')}, numpy {facts.get('numpy')}, "
                 f"{facts.get('runtime')}, {facts.get('host', {}).get('qemu')}")
        out.info(f"  bench with: edgeprune bench ARTIFACT --target {name}-emulated")


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
