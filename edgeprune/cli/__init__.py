"""The ``edgeprune`` command line: a Click group whose subcommands live one per module.

Errors raised as :class:`edgeprune.base.errors.EdgepruneError` become one line on stderr and
the error's exit code (1 verification/budget/device/output, 2 bad input); Ctrl-C exits 130,
SIGTERM 143 (both clean up: they raise through every ``finally``). Anything
else is a bug in edgeprune or in a library below it: it is still one line (``internal error``,
exit 1), and ``-v`` prints the traceback, so no Python traceback reaches a user by default.
"""
from __future__ import annotations

import sys

import click

from edgeprune import __version__
from edgeprune.base import env as _env
from edgeprune.base.console import Output
from edgeprune.base.errors import EdgepruneError

json_option = click.option(
    "--json", "json_mode", is_flag=True, help="Print one machine-readable JSON document on stdout."
)


input_shape_option = click.option(
    "--input-shape", "input_shape", multiple=True, metavar="[NAME=]DIMS",
    help="Fix unknown input dimensions (sequence length, image size), e.g. 128, 1x224x224x3 or "
         "tokens=1x128 (repeat for several inputs); used for conversion, calibration and MAC counting "
         "(default: the model's own input shape).")


def _parse_input_range(ctx, param, value):
    from edgeprune.load.datasets import parse_input_range

    return parse_input_range(value)


def input_range_option(default: str = "what a leading Rescaling/Normalization layer expects, else the range "
                                       "of the calibration data, else the profile's preprocessing.scale"):
    """``--input-range LO,HI`` (parsed to ``(lo, hi)``) for every command that reads input data."""
    return click.option(
        "--input-range", "input_range", default=None, metavar="LO,HI", callback=_parse_input_range,
        help=f"The value range the model's input takes, e.g. -1,1 or 0,255: image folders are scaled onto it "
             f"and data outside it is refused (default: {default}).")


def model_code_options(func):
    """``--custom-objects`` and ``--unsafe`` for every command that loads a Keras model.

    One declaration and one help text (SECURITY.md's trust model in a sentence each), so the
    commands cannot drift apart. The command receives ``custom_objects`` (``str`` or None, the
    file is checked and imported by :func:`edgeprune.load.model_io.load_custom_objects`, which names
    it in a one-line error) and ``unsafe`` (bool).
    """
    func = click.option(
        "--unsafe", "unsafe", is_flag=True,
        help="Trust the model file: Keras may run its Lambda layers and import the modules its config names, "
             "TensorFlow every op of its graph (see SECURITY.md; default: off, safe mode).")(func)
    return click.option(
        "--custom-objects", "custom_objects", type=click.Path(path_type=str), default=None, metavar="FILE.py",
        help="Python file with the model's custom layers, imported (trusted code, see SECURITY.md): its "
             "`custom_objects` dict, else its classes; optional `tf_keras_objects` and `pruning_rules` dicts "
             "(default: none).")(func)


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
            from edgeprune.base.errors import InputError

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


VERBOSE_HELP = "Show debug output and TensorFlow's own logs (default: off)."
QUIET_HELP = "Only print errors and the final result (default: off)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeprune")
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """Prune, quantize and lower Keras models to TFLite for edge devices, then prove it on the device."""
    _env.set_verbose(verbose)
    ctx.obj = {"verbose": verbose, "quiet": quiet}


def _set_root_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """-v/-q typed after a command name: the same switch as before it (the group's ``ctx.obj``,
    which :func:`get_output` reads). Click has run the group's callback by the time it parses
    the command's options, so this only turns a flag on, never off."""
    if not value:
        return
    root = ctx.find_root()
    if root.obj is None:
        root.obj = {"verbose": False, "quiet": False}
    root.obj[param.name] = True
    if param.name == "verbose":
        _env.set_verbose(True)


def _accept_verbosity_everywhere(group: click.Group) -> None:
    """Give every command and nested group -v/--verbose and -q/--quiet, so that
    ``edgeprune compile ... -v`` means what ``edgeprune -v compile ...`` means."""
    for command in group.commands.values():
        names = {opt for param in command.params for opt in getattr(param, "opts", [])}
        for flags, help_text in ((("-v", "--verbose"), VERBOSE_HELP), (("-q", "--quiet"), QUIET_HELP)):
            if not names.intersection(flags):
                command.params.append(click.Option(list(flags), is_flag=True, expose_value=False,
                                                   callback=_set_root_flag, help=help_text))
        if isinstance(command, click.Group):
            _accept_verbosity_everywhere(command)


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
_accept_verbosity_everywhere(cli)


def _verbose_requested(argv: list[str] | None) -> bool:
    """Whether -v/--verbose was given, before or after the command name (read from the raw
    arguments: the error may have come before Click parsed them, or from Click itself)."""
    args = sys.argv[1:] if argv is None else argv
    for arg in map(str, args):
        if arg == "--":
            break
        if arg == "--verbose":
            return True
        # -v, or short flags combined (-vq); only -v and -q combine, so -ovdir is -o's value
        if arg.startswith("-") and not arg.startswith("--") and "v" in arg and set(arg[1:]) <= {"v", "q"}:
            return True
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
    from edgeprune.base.errors import Terminated

    raise Terminated(signum)


def raise_on_termination() -> None:
    """SIGTERM and SIGHUP raise (edgeprune.base.errors.Terminated, a KeyboardInterrupt) so that every
    ``finally`` and ``__exit__`` runs: the artifact temp dir and lock go, remote runs stop.
    A signal the parent set to ignored (nohup) stays ignored."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _raise_terminated)


def _interrupted(exc: BaseException) -> None:
    """Ctrl-C exits 130; SIGTERM/SIGHUP (Terminated, maybe wrapped in click's Abort) 128 + signal."""
    import signal

    from edgeprune.base.errors import Terminated

    _forget_unhandled_interrupt()
    cause = exc if isinstance(exc, Terminated) else exc.__cause__ or exc.__context__
    if isinstance(cause, Terminated):
        click.echo(f"edgeprune: terminated ({signal.Signals(cause.signum).name})", err=True)
        sys.exit(128 + cause.signum)
    click.echo("edgeprune: interrupted", err=True)
    sys.exit(130)


def _forget_unhandled_interrupt() -> None:
    """Make ``python -m edgeprune`` exit 130 after Ctrl-C, as the console script does.

    CPython sets a process-wide "unhandled KeyboardInterrupt" flag when a Ctrl-C lands inside
    code run from a string (``PyRun_String``: pybind11's ``exec``/``eval`` in TensorFlow and
    LiteRT), even though we catch it; under ``-m`` the interpreter then kills itself with
    SIGINT after our ``sys.exit(130)`` (exit status -2 to ``subprocess``, intermittently). A
    string ``exec`` resets that flag at its start, so one harmless one here clears it.
    """
    exec("pass", {})  # noqa: S102 - a constant string, run only to reset the flag


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from edgeprune.base.errors import known_fault

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
