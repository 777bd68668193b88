"""Device profiles: the bundled set validates, and bad files are refused with the field path."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeprune.base.errors import InputError
from edgeprune.cli import cli
from edgeprune.device.profiles import list_profiles, load_profile

REQUIRED = {"x86-64", "rpi4", "rpi5", "android-arm64", "cortex-m7"}


def test_bundled_profiles_validate_and_cover_the_required_devices():
    names = {p.name for p in list_profiles()}
    assert REQUIRED <= names


def test_microcontroller_profile_is_int8_only_with_kilobyte_budgets():
    mcu = load_profile("cortex-m7")
    assert mcu.operators.int8_only and mcu.operators.runtime == "tflm"
    assert [q.value for q in mcu.quantization.allowed] == ["int8"]
    assert mcu.budgets.max_arena_bytes <= 1024 * 1024
    assert mcu.budgets.max_model_bytes <= 2 * 1024 * 1024
    with pytest.raises(InputError, match="does not accept quantization 'float32'"):
        mcu.check_quantization("float32")


def test_ssh_profiles_name_a_host_alias():
    assert load_profile("rpi4").connection.kind == "ssh"
    assert load_profile("rpi4").connection.host == "rpi4"


def _write(tmp_path, text):
    path = tmp_path / "dev.yaml"
    path.write_text(text)
    return path


BASE = """
name: mine
description: my board
cpu: cortex-a53
arch: aarch64
cores: 4
"""


def test_user_profile_by_path(tmp_path):
    profile = load_profile(_write(tmp_path, BASE + "threads: 2\n"))
    assert profile.name == "mine" and profile.threads == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        ("threads: 0\n", "threads"),
        ("budgets:\n  max_model_bytes: -5\n", "budgets.max_model_bytes"),
        ("budgets:\n  max_modle_bytes: 5\n", "budgets.max_modle_bytes: Extra inputs"),
        ("quantization:\n  default: int4\n", "quantization.default"),
        ("quantization:\n  default: int8\n  allowed: [float32]\n", "default 'int8' is not in allowed"),
        ("connection:\n  kind: ssh\n", "needs 'host'"),
        ("operators:\n  int8_only: true\n", "int8_only allows only int8"),
    ],
)
def test_bad_profile_fields_are_reported_with_their_path(tmp_path, extra, message):
    path = _write(tmp_path, BASE + extra)
    with pytest.raises(InputError) as err:
        load_profile(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(InputError, match="not valid YAML"):
        load_profile(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(InputError, match="must be a YAML mapping"):
        load_profile(_write(tmp_path, "- a\n- b\n"))


def test_targets_cli_list_show_and_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["targets", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert REQUIRED <= {p["name"] for p in json.loads(result.stdout)}

    result = runner.invoke(cli, ["targets", "show", "rpi5", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["cpu"] == "cortex-a76"

    result = runner.invoke(cli, ["targets", "show", "rpi5"])
    assert "cortex-a76" in result.output

    result = runner.invoke(cli, ["targets", "show", "no-such-board"])
    assert result.exit_code != 0
