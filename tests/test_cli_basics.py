"""CLI conventions shared by every command: --version, --help everywhere, exit codes, no TF at --help."""
from __future__ import annotations

import subprocess
import sys

import click
from click.testing import CliRunner

import edgeprune
from edgeprune.cli import cli


def _all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert edgeprune.__version__ in result.output


def test_every_command_has_help():
    runner = CliRunner()
    commands = list(_all_commands(cli))
    assert commands, "no commands registered"
    for path, _ in commands:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output


def test_unknown_command_exits_2_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "No such command" in proc.stderr


def test_bad_target_exits_2_as_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "edgeprune", "targets", "show", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("edgeprune: error: unknown target 'nope'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from edgeprune.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TF' if 'tensorflow' in sys.modules else 'NOTF')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip().endswith("NOTF"), proc.stdout[-500:] + proc.stderr[-500:]


def test_python_api_exposes_the_commands():
    assert callable(edgeprune.load_profile)
    assert callable(edgeprune.list_profiles)


def test_verbose_command_does_not_leave_tensorflow_logs_on_for_the_next(monkeypatch):
    """-v lets TensorFlow's logs through by the environment, which child processes inherit; a
    quiet command after it in the same process (the Python API, a test runner) is quiet again."""
    import os

    from helpers_models import invoke_cli

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    invoke_cli(["-v", "targets"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    invoke_cli(["targets"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
