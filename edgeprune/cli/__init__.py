"""The ``edgeprune`` command line: a Click group whose subcommands live one per module.

Errors raised as :class:`edgeprune.errors.EdgepruneError` become one line on stderr and
the error's exit code (1 verification/budget/device/output, 2 bad input); Ctrl-C exits 130,
SIGTERM 143 (both clean up: they raise through every ``finally``). Anything
else is a bug in edgeprune or in a library below it: it is still one line (``internal error``,
exit 1), and ``-v`` prints the traceback, so no Python traceback reaches a user by default.
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


input_shape_option = click.option(
    "--input-shape", "input_shape", multiple=True, metavar="[NAME=]DIMS",
    help="Fix unknown input dimensions (sequence length, image size), e.g. 128, 1x224x224x3 or "
         "tokens=1x128 (repeat for several inputs); used for conversion, calibration and MAC counting.")


def deprecated_aliases(*pairs: tuple):
    """Old flag names kept working, hidden from --help: ``("--prune-macs", "--target-macs", float)``.

    One option has one name in every command; an old name sets the new option's value and
    prints a one-line deprecation warning. Giving both is refused.
    """
    import functools

    def key(flag: str) -> str:
        return flag.lstrip("-").replace("-", "_")

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            from edgeprune.errors import InputError

            for old, new, *_ in pairs:
                value = kwargs.pop(f"alias_{key(old)}", None)
                if value is None or value == ():
                    continue
                if kwargs.get(key(new)) not in (None, ()):
                    raise InputError(f"{old} is the old name of {new}: give only {new}")
                click.echo(f"edgeprune: warning: {old} is deprecated, use {new}", err=True)
                kwargs[key(new)] = value
            return func(*args, **kwargs)

        for old, _new, *kind in reversed(pairs):
            wrapper = click.option(old, f"alias_{key(old)}", default=None, hidden=True,
                                   type=kind[0] if kind else str)(wrapper)
        return wrapper

    return decorate


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
                 "report_cmd", "inspect_cmd", "verify_cmd", "pack_cmd", "sensitivity_cmd"):
        try:
            importlib.import_module(f"edgeprune.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"edgeprune.cli.{name}":
                raise


_register_commands()


def _verbose_requested(argv: list[str] | None) -> bool:
    """Whether -v/--verbose was given to the group (read before Click has parsed, or after it failed)."""
    args = sys.argv[1:] if argv is None else argv
    for arg in args:
        if arg in ("-v", "--verbose"):
            return True
        if arg == "--" or not arg.startswith("-"):
            break  # the group's options come before the command name
        if arg.startswith("-") and not arg.startswith("--") and "v" in arg[1:]:
            return True  # combined short flags such as -vq
    return False


def _internal_error(exc: BaseException, argv: list[str] | None) -> None:
    """One line for an unexpected exception; the traceback only with -v."""
    text = " ".join(str(exc).split())
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(detail) > 300:
        detail = detail[:297] + "..."
    if _verbose_requested(argv):
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        click.echo(f"edgeprune: internal error: {detail}", err=True)
    else:
        click.echo(f"edgeprune: internal error: {detail} (run with -v for the traceback)", err=True)


def _raise_terminated(signum, frame) -> None:
    from edgeprune.errors import Terminated

    raise Terminated(signum)


def raise_on_termination() -> None:
    """SIGTERM and SIGHUP raise (edgeprune.errors.Terminated, a KeyboardInterrupt) so that every
    ``finally`` and ``__exit__`` runs: the artifact temp dir and lock go, remote runs stop.
    A signal the parent set to ignored (nohup) stays ignored."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)


def _interrupted(exc: BaseException) -> None:
    """Ctrl-C exits 130; SIGTERM/SIGHUP (Terminated, maybe wrapped in click's Abort) 128 + signal."""
    import signal

    from edgeprune.errors import Terminated

    cause = exc if isinstance(exc, Terminated) else exc.__cause__ or exc.__context__
    if isinstance(cause, Terminated):
        click.echo(f"edgeprune: terminated ({signal.Signals(cause.signum).name})", err=True)
        sys.exit(128 + cause.signum)
    click.echo("edgeprune: interrupted", err=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from edgeprune.errors import known_fault

    raise_on_termination()
    try:
        cli.main(args=argv, prog_name="edgeprune", standalone_mode=False)
    except EdgepruneError as exc:
        _error_line(exc)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except MemoryError:
        click.echo("edgeprune: error: out of memory", err=True)
        sys.exit(1)
    except Exception as exc:  # an expected fault a writer or reader let through, else a bug
        fault = known_fault(exc)
        if fault is not None:
            _error_line(fault)
        _internal_error(exc, argv)
        sys.exit(1)
    sys.exit(0)


def _error_line(exc: EdgepruneError) -> None:
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    click.echo(f"edgeprune: error: {message}", err=True)
    sys.exit(exc.exit_code)
