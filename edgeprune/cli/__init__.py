"""The ``edgeprune`` command line: a Click group whose subcommands live one per module.

Errors raised as :class:`edgeprune.errors.EdgepruneError` become one line on stderr and
the error's exit code (1 verification/budget/device, 2 bad input); Ctrl-C exits 130.
"""
from __future__ import annotations

import sys

import click

from edgeprune import __version__, _env
from edgeprune.console import Output
from edgeprune.errors import EdgepruneError

json_option = click.option(
    "--json", "json_mode", is_flag=True, help="Print one machine-readable JSON document on stdout."
)


def get_output(ctx: click.Context, json_mode: bool = False) -> Output:
    """The Output for this invocation, honouring the group's -v/-q and the command's --json."""
    root = ctx.find_root().obj or {}
    return Output(json_mode=json_mode, quiet=root.get("quiet", False), verbose=root.get("verbose", False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeprune")
@click.option("-v", "--verbose", is_flag=True, help="Show debug output and TensorFlow's own logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only print errors and the final result.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Prune, quantize and lower Keras models to TFLite for edge devices, then prove it on the device."""
    _env.set_verbose(verbose)
    ctx.obj = {"verbose": verbose, "quiet": quiet}


def _register_commands() -> None:
    # Each module adds its commands to ``cli``; a missing module (work in progress) is skipped
    # only if it does not exist at all, never when it fails to import for another reason.
    import importlib

    for name in ("targets_cmd", "compile_cmd", "bench_cmd", "prune_cmd", "latency_cmd", "demo_cmd", "search_cmd",
                 "report_cmd", "inspect_cmd", "verify_cmd", "pack_cmd"):
        try:
            importlib.import_module(f"edgeprune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"edgeprune.cli.{name}":
                raise


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="edgeprune", standalone_mode=False)
    except EdgepruneError as exc:
        click.echo(f"edgeprune: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("edgeprune: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("edgeprune: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(0)
