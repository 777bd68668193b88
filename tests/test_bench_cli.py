"""``edgeprune bench`` on this machine: JSON output, tables, exit codes 0/1/2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_harness_local import build_models

import edgeprune.base.env  # noqa: F401
from edgeprune.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("bench-cli-models"))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_json_document(models, capsys):
    code, out, err = run_cli(capsys, models["int8"], "--threads", "1,2", "--runs", "10", "--warmup", "1",
                             "--val-data", models["eval"], "--json")
    assert code == 0, err
    doc = json.loads(out)  # stdout is exactly one JSON document
    dev = doc["devices"][0]
    assert [r["threads"] for r in dev["results"]] == [1, 2]
    for r in dev["results"]:
        s = r["steady"]
        assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"]
    assert 0.0 <= dev["eval"]["accuracy"] <= 1.0
    assert "outputs" not in dev["eval"] and "outputs_npy_b64" not in dev["eval"]
    assert doc["settings"] == {"threads": [1, 2], "runs": 10, "warmup": 1, "min_duration_s": 0.0}


def test_table_output(models, capsys):
    code, out, err = run_cli(capsys, models["f32"], "--runs", "10", "--val-data", models["eval"], "--reference",
                             models["reference"], "--max-accuracy-drop", "1")
    assert code == 0, err
    assert "p99" in out and "RSS MB" in out and "agree" in out and "gate" in out and "PASS" in out


def test_min_duration_keeps_running(models, capsys):
    code, out, _ = run_cli(capsys, models["f32"], "--runs", "1", "--warmup", "0", "--min-duration", "0.2", "--json")
    assert code == 0
    steady = json.loads(out)["devices"][0]["results"][0]["steady"]
    assert steady["count"] > 1  # --runs 1 alone would stop after one


def test_gates_exit_1(models, capsys):
    code, out, err = run_cli(capsys, models["other"], "--runs", "5", "--val-data", models["eval"], "--reference",
                             models["reference"], "--max-accuracy-drop", "1", "--json")
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("edgeprune: error: local: accuracy") and "reference 100.00%" in line
    assert json.loads(out)["gate"]["passed"] is False  # the numbers are still printed
    code, _, err = run_cli(capsys, models["f32"], "--runs", "5", "--max-latency-ms", "0.000001")
    assert code == 1 and "> budget 1e-06 ms" in err


@pytest.mark.parametrize("args, message", [
    (["missing.tflite"], "missing.tflite: artifact not found"),
    (["{junk}"], "not a TFLite model"),
    (["{f32}", "--val-data", "{eval_bad_shape}"], "expected samples of shape (N, 8, 8, 1) for the model input, found (N, 9, 9, 1)"),
    (["{f32}", "--threads", "1,x"], "--threads: expected a comma-separated list"),
    (["{f32}", "--val-data", "missing.npz"], "--val-data 'missing.npz': no such file"),
    (["{f32}", "--fleet", "{bad_fleet}"], "hosts[0]: unknown key(s) port"),
    (["{f32}", "--host", "a b"], "--host 'a b': expected an ssh alias"),
    (["{f32}", "--host", "pi@h:99999"], "port must be a number"),
    (["{f32}", "--target", "no-such-profile"], "unknown target 'no-such-profile'"),
    (["{f32}", "--max-accuracy-drop", "1"], "--max-accuracy-drop needs --reference"),
    (["{f32}", "--max-latency-ms", "0"], "--max-latency-ms: expected a positive number"),
    (["{f32}", "--runs", "0"], "--runs must be >= 1"),
])
def test_bad_input_exits_2(models, capsys, tmp_path, args, message):
    junk = tmp_path / "junk.tflite"
    junk.write_text("not a model")
    bad_fleet = tmp_path / "fleet.yaml"
    bad_fleet.write_text("hosts:\n  - host: pi@rpi\n    port: 22\n")
    names = {**{k: v for k, v in models.items() if isinstance(v, type(tmp_path))}, "junk": junk, "bad_fleet": bad_fleet}
    code, _, err = run_cli(capsys, *[a.format(**names) for a in args])
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: ") and message in lines[0]


def test_help_is_fast_and_lists_options():
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "bench", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--target", "--host", "--fleet", "--threads", "--runs", "--warmup", "--min-duration", "--val-data",
                 "--reference", "--max-accuracy-drop", "--max-latency-ms", "--remote-python", "--json"):
        assert flag in proc.stdout
    check = subprocess.run([sys.executable, "-c", "import edgeprune.cli.bench_cmd, sys; "
                            "print('tensorflow' in sys.modules, 'numpy' in sys.modules)"],
                           capture_output=True, text=True)
    assert check.stdout.split() == ["False", "False"], check.stderr


def test_python_api_reexport():
    import edgeprune
    from edgeprune.device.api import bench

    assert edgeprune.bench is bench


@pytest.mark.parametrize("spec, destination, port", [
    ("rpi4", "rpi4", None),
    ("pi@10.0.0.5", "pi@10.0.0.5", None),
    ("pi@10.0.0.5:2222", "pi@10.0.0.5", 2222),
    ("root@[::1]:2200", "root@::1", 2200),
    ("ssh://pi@board:22", "pi@board", 22),
])
def test_host_specs(spec, destination, port):
    from edgeprune.device.remote import parse_host

    host = parse_host(spec)
    assert (host.destination, host.port, host.label) == (destination, port, spec)


def test_fleet_file_forms(tmp_path):
    from edgeprune.device.fleet import load_fleet

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("- rpi4\n- host: pi@h:2222\n  python: /opt/venv/bin/python\n  threads: 1,4\n- host: local\n")
    devices = load_fleet(fleet)
    assert [d.label for d in devices] == ["rpi4", "pi@h:2222", "local"]
    assert devices[1].python == "/opt/venv/bin/python" and devices[1].threads == (1, 4)
    assert devices[2].is_local and not devices[0].is_local
