"""What a newcomer types and reads (issue #20 items 4, 5, 11; #21 item 5): -v/-q after the
command, tables that never cut a name or a number, and a help text for every option that
says its default."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import click
import numpy as np
import pytest
from click.testing import CliRunner

import edgeprune.base.env as _env
from edgeprune.base.console import _fmt
from edgeprune.cli import _internal_error, _verbose_requested, cli
from edgeprune.pruning.criteria import CRITERIA

LONG = "a_convolution_layer_whose_name_is_much_longer_than_sixty_terminal_columns"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from _all_commands(command, (*prefix, name))


def _options(command):
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden]


# ---------------------------------------------------------------- -v / -q anywhere

def test_every_command_and_group_takes_verbose_and_quiet():
    for path, command in _all_commands(cli):
        flags = {opt for p in _options(command) for opt in p.opts}
        assert {"-v", "--verbose", "-q", "--quiet"} <= flags, path


def test_quiet_after_the_command_means_what_it_means_before():
    runner = CliRunner()
    loud = runner.invoke(cli, ["targets", "list"])
    assert loud.exit_code == 0 and "rpi4" in loud.output
    for args in (["-q", "targets", "list"], ["targets", "-q", "list"], ["targets", "list", "-q"],
                 ["targets", "list", "--quiet"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
        assert "rpi4" not in result.output, args  # -q drops the table


def test_verbose_after_the_command_lets_tensorflow_logs_through_then_not(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    assert CliRunner().invoke(cli, ["targets", "list", "-v"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert CliRunner().invoke(cli, ["targets", "list"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    _env.set_verbose(False)


def test_verbose_anywhere_prints_the_traceback_of_an_internal_error(capsys):
    assert _verbose_requested(["compile", "m.keras", "-o", "out", "-v"])
    assert _verbose_requested(["-v", "compile", "m.keras"])
    assert _verbose_requested(["bench", "a.tflite", "-qv"])
    assert _verbose_requested(["bench", "a.tflite", "--verbose"])
    assert not _verbose_requested(["compile", "m.keras", "-ovenv"])  # -o's value, not -v
    assert not _verbose_requested(["compile", "m.keras", "--", "-v"])
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        _internal_error(exc, ["targets", "list", "-v"])
    err = capsys.readouterr().err
    assert "Traceback" in err and "edgeprune: internal error: RuntimeError: boom" in err


# ---------------------------------------------------------------- tables

def test_piped_tables_take_their_natural_width_whatever_columns_says():
    """A pipe is not a terminal: COLUMNS=60 must not cut the profile descriptions (a real pipe)."""
    env = {**os.environ, "COLUMNS": "60"}
    for name in ("TTY_COMPATIBLE", "FORCE_COLOR"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "targets", "list"], capture_output=True,
                          text=True, env=env)
    listed = json.loads(subprocess.run([sys.executable, "-m", "edgeprune", "targets", "list", "--json"],
                                       capture_output=True, text=True, env=env).stdout)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout
    for profile in listed:
        assert profile["description"] in proc.stdout  # whole, on one line
        assert f"│ {profile['name']} " in proc.stdout


def test_terminal_tables_wrap_names_at_its_width_and_keep_numbers_whole(monkeypatch):
    """On a 70-column terminal the table folds long names inside their cells (no ellipsis);
    every character of them is still there, and every number stays on one line."""
    from edgeprune.base.console import Output

    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "70")
    rows = [(1, LONG + "/BiasAdd;" + LONG + "/Conv2D", "CONV_2D", 123456789012, 12.3456789, "1,234,567"),
            (2, "short", "DEPTHWISE_CONV_2D", 7, -0.000123456, "[0.12, 0.34]")]
    result = CliRunner().invoke(click.Command("t", callback=lambda: Output().table(
        "Quantization error", ["rank", "tensor", "op", "MACs", "SQNR dB", "count"], rows)), [])
    text = ANSI.sub("", result.output)
    assert result.exit_code == 0, result.output
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 70
    body = [line for line in text.splitlines() if line.startswith("│")]
    tensor_column = "".join(line.split("│")[2].strip() for line in body)
    assert tensor_column == "".join(str(r[1]).replace(" ", "") for r in rows)
    for number in ("123456789012", "12.35", "1,234,567", "-0.0001235", "[0.12,", "0.34]"):
        assert number in text, number


@pytest.fixture(scope="module")
def long_named_model(tmp_path_factory):
    tk = _env.tf_keras()
    tk.utils.set_random_seed(0)
    inputs = tk.Input((8, 8, 1), name="image")
    h = tk.layers.Conv2D(8, 3, activation="relu", name=LONG)(inputs)
    h = tk.layers.Conv2D(8, 3, activation="relu", name="second_conv")(h)
    h = tk.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = tk.layers.Dense(4, activation="softmax", name="head")(h)
    root = tmp_path_factory.mktemp("a_directory_with_a_long_name_so_the_artifact_path_is_long_too")
    tk.Model(inputs, outputs).save(root / "model.h5")
    np.save(root / "calib.npy", np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32))
    return root


def test_compile_with_verbose_after_and_piped_summary_and_inspect_keep_names_and_numbers(long_named_model):
    root, runner, env = long_named_model, CliRunner(), {"COLUMNS": "60"}
    art = root / "art"
    result = runner.invoke(cli, ["compile", str(root / "model.h5"), "--quantize", "int8", "--calibration",
                                 str(root / "calib.npy"), "--num-samples", "16", "-o", str(art), "-v"], env=env)
    assert result.exit_code == 0, result.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert str(art / "model.tflite") in result.output  # the artifact path, longer than 60 columns
    assert str(manifest["artifact"]["bytes"]) in result.output

    keras = runner.invoke(cli, ["inspect", str(root / "model.h5")], env=env)
    assert keras.exit_code == 0, keras.output
    assert LONG in keras.output and "…" not in keras.output

    args = ["inspect", str(art / "model.tflite"), "--top", "50"]
    shown = runner.invoke(cli, args, env=env)
    facts = json.loads(runner.invoke(cli, [*args, "--json"]).output)
    assert shown.exit_code == 0, shown.output
    assert "…" not in shown.output
    assert f"{facts['bytes']:,}" in shown.output and f"{facts['macs']:,}" in shown.output
    activations = [t for t in facts["tensors"] if not t["constant"]]
    assert any(LONG in t["name"] for t in activations)
    from edgeprune.quantize.inspection import display_name

    for tensor in activations:  # fused names collapse to the writing op's (whole) name, +N; --json has all
        assert display_name(tensor["name"], None) in shown.output
        assert LONG in display_name(tensor["name"], None) or LONG not in tensor["name"]
        scale = (tensor["quantization"] or {}).get("scale")
        if scale is not None:
            assert _fmt(scale) in shown.output, tensor


# ---------------------------------------------------------------- help texts

# A numeric option names its default: Click's show_default, or "default" / "[VALUE]" in its help.
NAMES_A_DEFAULT = re.compile(r"default|\[[^\]]+\]", re.IGNORECASE)


def test_every_option_says_what_it_is_and_a_numeric_one_its_default():
    missing, no_default = [], []
    for path, command in _all_commands(cli):
        for option in _options(command):
            where = (" ".join(path), option.opts[-1])
            if not (option.help or "").strip():
                missing.append(where)
                continue
            numeric = isinstance(option.type, (click.types.IntParamType, click.types.FloatParamType))
            shown = option.show_default and option.default is not None
            if numeric and not option.is_flag and not shown and not NAMES_A_DEFAULT.search(option.help):
                no_default.append(where)
    assert not missing, f"options without help: {missing}"
    assert not no_default, f"numeric options whose help names no default: {no_default}"


def test_criterion_lists_its_choices_everywhere():
    for name in ("compile", "prune", "sensitivity"):
        option = next(p for p in cli.commands[name].params if "--criterion" in getattr(p, "opts", ()))
        assert isinstance(option.type, click.Choice) and tuple(option.type.choices) == CRITERIA, name
        assert "taylor" in CliRunner().invoke(cli, [name, "--help"]).output


# search_cmd.py is the lead's to move onto model_code_options; drop it from here then.
NOT_YET_SHARED: set = set()


def test_custom_objects_and_unsafe_are_one_option_with_one_help_text():
    texts: dict[str, set] = {"--custom-objects": set(), "--unsafe": set()}
    users = set()
    for path, command in _all_commands(cli):
        for option in _options(command):
            flag = option.opts[-1]
            if flag in texts and path[0] not in NOT_YET_SHARED:
                texts[flag].add(option.help)
                users.add(path[0])
                assert option.name == flag.lstrip("-").replace("-", "_"), path
    assert {"compile", "prune", "inspect", "latency-table", "sensitivity"} <= users
    assert all(len(helps) == 1 for helps in texts.values()), texts
    assert "SECURITY.md" in next(iter(texts["--unsafe"]))

