"""`edgeprune inspect` on artifacts and Keras models, per-tensor quantization error measured on
the artifact, and `compile --keep-float auto` choosing float layers by measurement."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_models import invoke_cli, tiny_keras3_resnet
from report_helpers import degenerate_model, labelled_by, outlier_model, prunable_cnn

from edgeprune.quantize.convert import convert, read_graph

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    model = prunable_cnn()
    model.save(root / "m.h5")
    x, y = labelled_by(model, 32)
    np.savez(root / "x.npz", x=x, y=y)
    (root / "int8.tflite").write_bytes(convert(model, "int8", representative=x))
    (root / "float.tflite").write_bytes(convert(model, "float32"))
    tiny_keras3_resnet().save(root / "k3.keras")
    return root


def _json(args):
    code, result = invoke_cli([*args, "--json"])
    assert code == 0, result.output
    return json.loads(result.stdout)


def test_inspect_int8_artifact(files):
    r = _json(["inspect", files / "int8.tflite"])
    graph = read_graph((files / "int8.tflite").read_bytes())
    assert r["kind"] == "tflite" and sum(r["op_counts"].values()) == len(graph["ops"]) == len(r["ops"])
    # conv1 3x3x1x8 on 6x6, conv2 3x3x8x8 on 4x4, head 128x10
    assert r["macs"] == 6 * 6 * 8 * 9 + 4 * 4 * 8 * 72 + 128 * 10
    conv = [t for t in r["tensors"] if not t["constant"] and t["dtype"] == "int8"]
    assert conv and all(t["quantization"]["scale"] > 0 for t in conv)
    weights = [t for t in r["tensors"] if t["constant"] and t["dtype"] == "int8" and len(t["shape"]) == 4]
    assert weights and all(t["quantization"]["channels"] == t["shape"][0] for t in weights)  # per-channel
    assert r["constant_bytes"] == sum(r["size_by_op"].values()) == sum(r["size_by_dtype"].values())
    x = r["xnnpack"]
    assert sorted(x["delegated_ops"] + x["fallback_ops"]) == list(range(len(r["ops"])))
    assert x["delegated_count"] > 0 and r["arena"]["bytes"] > 0


def test_inspect_float_tflite_runs_fully_on_xnnpack(files):
    r = _json(["inspect", files / "float.tflite"])
    assert r["xnnpack"]["fallback_ops"] == [] and r["xnnpack"]["partitions"] >= 1
    assert set(r["size_by_dtype"]) <= {"float32", "int32"}


def test_inspect_keras_groups_and_locks(files):
    r = _json(["inspect", files / "k3.keras"])
    assert r["kind"] == "keras" and r["flavour"] == "keras3" and r["params"] > 0 and r["macs"] > 0
    locked = {g["name"]: g["locked"] for g in r["groups"] if not g["prunable"]}
    assert any("output" in reason for reason in locked.values())
    # the residual Add couples c1 and the nested inner_conv into one group
    coupled = [g for g in r["groups"] if "c1" in g["layers"] and "add" in g["layers"]]
    assert coupled and coupled[0]["channels"] == 4


def test_inspect_errors_are_one_line(files, tmp_path):
    (tmp_path / "junk.tflite").write_bytes(b"not a model at all")
    code, result = invoke_cli(["inspect", tmp_path / "junk.tflite"])
    assert code == 2
    code, result = invoke_cli(["inspect", files / "int8.tflite", "--quant-error"])
    assert code == 2 and "--reference" in str(result.exception)


def test_quant_error_on_the_artifact(files):
    r = _json(["inspect", files / "int8.tflite", "--quant-error", "--reference", files / "m.h5",
               "--calibration", files / "x.npz", "--num-samples", "16"])
    assert r["samples"] == 16 and r["compared"] >= 4 and not r["unmatched"]
    ops = {row["op"] for row in r["layers"]}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= ops
    errors = [row["rmse_over_range"] for row in r["layers"]]
    assert errors == sorted(errors, reverse=True)  # worst first, by error / float range
    assert [row["rank"] for row in r["layers"]] == list(range(1, len(errors) + 1)) and r["degenerate_count"] == 0
    for row in r["layers"]:
        lo, hi = row["float_range"]
        assert hi > lo and row["rmse_over_range"] == pytest.approx(row["rmse"] / (hi - lo))
    sqnr = [row["sqnr_db"] for row in r["layers"] if row["sqnr_db"] is not None]
    assert all(10 < s < 80 for s in sqnr) and all(row["cosine"] > 0.9 for row in r["layers"])
    # the same measurement against the float .tflite gives the same numbers
    r2 = _json(["inspect", files / "int8.tflite", "--quant-error", "--reference", files / "float.tflite",
                "--calibration", files / "x.npz", "--num-samples", "16"])
    assert [row["tensor"] for row in r2["layers"]] == [row["tensor"] for row in r["layers"]]
    assert np.allclose([row["rmse"] for row in r2["layers"]], [row["rmse"] for row in r["layers"]], rtol=1e-4)


def test_quant_error_finds_the_outlier_layer(tmp_path):
    from edgeprune.quantize.quant_error import measure

    model = outlier_model()
    x, _ = labelled_by(model, 16)
    q = convert(model, "int8", representative=x)
    r = measure(q, convert(model, "float32"), x)
    worst_local = max(r["layers"], key=lambda row: row["local_drop_db"] or 0)
    assert worst_local["op"] == "FULLY_CONNECTED" and "head" in worst_local["tensor"]
    assert r["layers"][0]["sqnr_db"] < 10  # the output is ruined


def test_degenerate_tensors_are_flagged_not_ranked_first(tmp_path):
    """A ~1e-8 tensor (SQNR ~19 dB, which ranked it worst) and a constant ReLU are flagged apart;
    the ranking starts with a tensor that carries signal, and --json keeps full fused names."""
    from edgeprune.quantize.inspection import interpreter

    model = degenerate_model()
    model.save(tmp_path / "d.h5")
    x, y = labelled_by(model, 16)
    np.savez(tmp_path / "x.npz", x=x, y=y)
    art = convert(model, "int8", representative=x)
    (tmp_path / "d.tflite").write_bytes(art)
    args = ["inspect", tmp_path / "d.tflite", "--quant-error", "--reference", tmp_path / "d.h5",
            "--calibration", tmp_path / "x.npz", "--num-samples", "16"]
    r = _json(args)
    ranked = [row for row in r["layers"] if row["rank"] is not None]
    flagged = {row["tensor"]: row for row in r["layers"] if row["rank"] is None}
    assert r["degenerate_count"] == len(flagged) == 2
    tiny = next(row for name, row in flagged.items() if "tiny" in name)
    dead = next(row for name, row in flagged.items() if "dead" in name)
    assert tiny["scale"] * 255 < r["degenerate_span"] and "scale" in tiny["degenerate"]
    assert dead["float_range"][0] == dead["float_range"][1] and "constant" in dead["degenerate"]
    assert not any(k in ranked[0]["tensor"] for k in ("tiny", "dead"))
    assert [row["rank"] for row in ranked] == list(range(1, len(ranked) + 1))
    assert all(row["rmse_over_range"] is not None for row in ranked)
    # names in full: exactly the artifact's tensor names, ';'-joined fused names included
    names = {d["name"] for d in interpreter(art, delegates=False).get_tensor_details()}
    assert {row["tensor"] for row in r["layers"]} <= names
    assert ";" in dead["tensor"] and dead["tensor"] in names
    # the table for people: degenerate tensors in their own table, not in the ranking
    code, result = invoke_cli(args)
    assert code == 0, result.output
    ranking, _, apart = result.stdout.partition("Degenerate tensors, not ranked (2)")
    assert apart and "tiny" in apart and "dead" in apart
    assert "tiny" not in ranking and "dead" not in ranking


@pytest.mark.slow
def test_keep_float_auto_passes_the_gate_by_measurement(tmp_path):
    model = outlier_model()
    model.save(tmp_path / "o.h5")
    x, y = labelled_by(model, 48)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    base = ["compile", tmp_path / "o.h5", "--quantize", "int8", "--calibration", tmp_path / "d.npz",
            "--max-accuracy-drop", "5"]
    code, _ = invoke_cli([*base, "-o", tmp_path / "plain"])
    assert code == 1  # all-int8 fails the gate
    summary = _json([*base, "-o", tmp_path / "kf", "--keep-float", "auto"])
    assert summary["accuracy_gate"]["passed"]
    report = json.loads((tmp_path / "kf" / "report.json").read_text())
    kf = report["keep_float"]
    assert kf["passed"] and 1 <= len(kf["kept_float"]) < 4 and kf["drop_points_int8"] > 5
    assert all("bytes_added" in s and "latency_ms_added" in s for s in kf["steps"])
    graph = read_graph((tmp_path / "kf" / "model.tflite").read_bytes())
    float_fc = [op for op, ins, outs in graph["ops"] if op == "FULLY_CONNECTED"
                and graph["tensors"][outs[0]].type == "FLOAT32"]
    assert float_fc  # a kept layer really runs in float in the artifact
    assert "kept in float" in (tmp_path / "kf" / "report.html").read_text()


def test_keep_float_needs_a_gate(tmp_path):
    model = outlier_model()
    model.save(tmp_path / "o.h5")
    x, y = labelled_by(model, 8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code, result = invoke_cli(["compile", tmp_path / "o.h5", "--quantize", "int8", "--calibration",
                               tmp_path / "d.npz", "--keep-float", "auto", "-o", tmp_path / "o"])
    assert code == 2 and "--max-accuracy-drop" in str(result.exception)
    code, result = invoke_cli(["compile", tmp_path / "o.h5", "--quantize", "float32", "--keep-float", "auto",
                               "--max-accuracy-drop", "1", "--calibration", tmp_path / "d.npz", "-o", tmp_path / "o"])
    assert code == 2 and "int8" in str(result.exception)


def test_quant_error_through_the_runner_matches_in_process(files):
    """--host local runs the artifact in the bench runner's own process, exactly as on a device."""
    args = ["inspect", files / "int8.tflite", "--quant-error", "--reference", files / "m.h5",
            "--calibration", files / "x.npz", "--num-samples", "8"]
    here = _json(args)
    runner = _json([*args, "--host", "local"])
    assert runner["device"] == "local" and here["device"].startswith("this machine")
    assert [r["tensor"] for r in runner["layers"]] == [r["tensor"] for r in here["layers"]]
    assert np.allclose([r["rmse"] for r in runner["layers"]], [r["rmse"] for r in here["layers"]], rtol=1e-6)


@pytest.mark.slow
def test_quant_error_on_an_ssh_device(files, tmp_path, monkeypatch):
    import sshd

    if not sshd.sshd_available():
        pytest.skip("OpenSSH server not installed (scripts/setup.sh --test installs it)")
    import sys

    server = sshd.start_sshd(tmp_path / "sshd")
    try:
        monkeypatch.setenv("EDGEPRUNE_SSH_CONFIG", str(server.config))
        args = ["inspect", files / "int8.tflite", "--quant-error", "--reference", files / "m.h5",
                "--calibration", files / "x.npz", "--num-samples", "8"]
        remote = _json([*args, "--host", "edgeprune-test", "--remote-python", sys.executable])
        here = _json(args)
        assert remote["device"] == "edgeprune-test"
        assert np.allclose([r["sqnr_db"] or 0 for r in remote["layers"]], [r["sqnr_db"] or 0 for r in here["layers"]])
        assert sorted(server.remote_tmp.glob("edgeprune.*")) == []  # the device is left clean
    finally:
        server.stop()
