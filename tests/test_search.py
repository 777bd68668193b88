"""Search: every trial runs compile's pipeline; Optuna studies in SQLite; budgets as constraints;
per-stage spaces from YAML; NSGA-II; shipping a trial; latency tables; sensitivity curves.

Real parts throughout: the TFLite converter, the LiteRT interpreter (in-process and the bench
runner subprocess), SQLite, and a real sshd for a remote target. Shared studies on PostgreSQL
are in test_search_postgres.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_training_fixtures import write_search_inputs

from edgeprune.base.errors import InputError
from edgeprune.cli import cli
from edgeprune.search import search
from edgeprune.search.sensitivity import greedy_allocation, sensitivity

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")  # rounds channels to 4
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_search_inputs(tmp_path_factory.mktemp("search"))


def _load(url, name):
    import optuna

    return optuna.load_study(study_name=name, storage=url)


@pytest.mark.slow
def test_grid_trials_are_compiled_artifacts_and_a_rerun_resumes(files, tmp_path):
    kw = dict(val_data=str(files / "val.npz"), target=SMALL_CPU, sampler="grid", latency_runs=3,
              space={"ratios": [0.0, 0.5], "quantizations": ["float32", "int8"]}, output_dir=tmp_path / "s")
    result = search(str(files / "digits.h5"), **kw)
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4
    assert {(t["params"]["ratio"], t["params"]["quantization"]) for t in trials} == {
        (0.0, "float32"), (0.0, "int8"), (0.5, "float32"), (0.5, "int8")}
    for t in trials:  # each trial is a compile artifact directory: model.tflite + manifest + report
        blob = Path(t["artifact"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == t["sha256"] and len(blob) == t["model_bytes"]
        manifest = json.loads((Path(t["artifact"]).parent / "manifest.json").read_text())
        assert manifest["quantization"]["mode"] == t["params"]["quantization"]
        assert t["latency_ms"] > 0 and t["latency_source"] == "measured" and t["device"] == "local"
    by = {(t["params"]["ratio"], t["params"]["quantization"]): t for t in trials}
    assert by[(0.0, "int8")]["model_bytes"] < by[(0.0, "float32")]["model_bytes"] / 2
    assert by[(0.5, "float32")]["macs"] < by[(0.0, "float32")]["macs"]
    # the unpruned float32 artifact scores what the Keras model scores
    assert abs(by[(0.0, "float32")]["accuracy"] - result["baseline"]["accuracy"]) < 1e-6
    assert result["best"]["accuracy"] == max(t["accuracy"] for t in trials if t["feasible"])
    assert result["pareto"] and Path(result["plot"]).read_bytes().startswith(PNG)
    assert json.loads(Path(result["results"]).read_text())["best"]["number"] == result["best"]["number"]

    again = search(str(files / "digits.h5"), **kw)  # the study is complete: nothing runs again
    assert again["trials_run_here"] == [] and len(again["trials"]) == 4
    assert _load(f"sqlite:///{(tmp_path / 's' / 'study.db').resolve()}", again["study"]["name"]).trials[0].params


@pytest.mark.slow
def test_budgets_are_constraints_and_nothing_fitting_exits_1(files, tmp_path):
    # between the int8 (~8 kB) and float32 (~17 kB) artifact sizes: float32 breaks compile's check
    profile = tmp_path / "half.yaml"
    profile.write_text(Path(SMALL_CPU).read_text().replace("name: small-cpu", "name: half")
                       + "budgets:\n  max_model_bytes: 12000\n")
    result = search(str(files / "digits.h5"), val_data=str(files / "val.npz"), target=str(profile),
                    sampler="tpe", trials=4, latency_runs=3, output_dir=tmp_path / "t",
                    space={"ratios": [0.0, 0.25], "quantizations": ["float32", "int8"]})
    study = _load(f"sqlite:///{(tmp_path / 't' / 'study.db').resolve()}", "digits-half")
    for t in study.trials:
        if t.state.name != "COMPLETE" or t.user_attrs.get("same_as") is not None:
            continue
        size = t.user_attrs["model_bytes"]
        assert t.user_attrs["constraints"]["max_model_bytes"] == pytest.approx((size - 12000) / 12000)
        assert (t.user_attrs["status"] == "rejected") == (size > 12000)  # compile kept DIR.rejected
        if size > 12000:
            assert t.user_attrs["artifact"].endswith(".rejected/model.tflite")
    assert result["best"] is None or result["best"]["model_bytes"] <= 12000

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(Path(SMALL_CPU).read_text().replace("name: small-cpu", "name: tiny")
                    + "budgets:\n  max_model_bytes: 100\n")
    run = CliRunner().invoke(cli, ["search", str(files / "digits.h5"), "--target", str(tiny), "--val-data",
                                   str(files / "val.npz"), "--sampler", "grid", "--ratios", "0.5", "--quantize",
                                   "int8", "--latency-runs", "3", "-o", str(tmp_path / "u"), "--json"])
    assert run.exit_code == 1, run.output
    doc = json.loads(run.stdout)
    assert doc["best"] is None and "max_model_bytes" in doc["trials"][0]["violations"][0]


@pytest.mark.slow
def test_nsga2_per_stage_space_from_yaml_and_ship_a_pareto_trial(files, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("per_stage: true\nstage_ratios: [0.0, 0.5]\nquantizations: [int8]\nround_to: [4]\n")
    run = CliRunner().invoke(cli, ["search", str(files / "digits.h5"), "--target", SMALL_CPU, "--val-data",
                                   str(files / "val.npz"), "--space", str(space), "--sampler", "nsga2",
                                   "--trials", "5", "--latency-runs", "3", "-o", str(tmp_path / "n"),
                                   "--study-name", "nsga", "--json"])
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    assert doc["objectives"] == ["accuracy", "latency", "size"]
    assert set(doc["space"]["distributions"]) >= {"stage:s0-8x8", "stage:s1-4x4"}
    assert "ratio" not in doc["space"]["distributions"]
    url = f"sqlite:///{(tmp_path / 'n' / 'study.db').resolve()}"
    study = _load(url, "nsga")
    assert len(study.directions) == 3
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 5
    full = [t for t in done if t.params["stage:s0-8x8"] == 0.5 and t.params["stage:s1-4x4"] == 0.5]
    none = [t for t in done if t.params["stage:s0-8x8"] == 0.0 and t.params["stage:s1-4x4"] == 0.0]
    if full and none:
        assert full[0].user_attrs["macs"] < none[0].user_attrs["macs"]

    dest = tmp_path / "shipped"
    ship = CliRunner().invoke(cli, ["compile", "--from-study", url, "--study-name", "nsga", "--pick", "pareto:1",
                                    "-o", str(dest), "--json"])
    assert ship.exit_code == 0, ship.output
    manifest = json.loads((dest / "manifest.json").read_text())
    number = manifest["study"]["trial"]
    assert number == doc["pareto"][0]
    trial = study.trials[number]
    assert manifest["study"]["params"] == trial.params
    per_layer = manifest["options"]["per_layer"] or {}
    assert per_layer.get("conv1", 0.0) == trial.params["stage:s0-8x8"] or (
        trial.params["stage:s0-8x8"] == 0.0 and "conv1" not in per_layer)
    assert manifest["artifact"]["sha256"] == trial.user_attrs["sha256"]


@pytest.mark.slow
def test_latency_table_predicts_and_the_front_is_measured(files, tmp_path):
    from edgeprune.pruning.api import latency_table

    table = tmp_path / "table.json"
    latency_table(str(files / "digits.h5"), table, round_to=4, min_channels=4)
    result = search(str(files / "digits.h5"), val_data=str(files / "val.npz"), target=SMALL_CPU,
                    sampler="grid", latency_table=str(table), latency_runs=3, output_dir=tmp_path / "p",
                    space={"ratios": [0.0, 0.75], "quantizations": ["float32"]})
    by = {t["params"]["ratio"]: t for t in result["trials"]}
    assert all(t["latency_source"] == "predicted" for t in by.values())
    assert by[0.75]["latency_ms"] < by[0.0]["latency_ms"]  # the table sees the narrower layers
    for number in result["pareto"]:  # the final candidates are measured for real
        measured = next(t for t in result["trials"] if t["number"] == number)["latency_measured"]
        assert measured["latency_ms"] > 0 and measured["device"] == "local"


def test_bad_inputs_are_one_line_errors(files, tmp_path):
    model, val = str(files / "digits.h5"), str(files / "val.npz")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ratios: [0.5]\nwidth: 3\n")
    with pytest.raises(InputError, match=r"--space .*bad\.yaml: width: Extra inputs"):
        search(model, val_data=val, space=str(bad), output_dir=tmp_path / "x")
    with pytest.raises(InputError, match="outside"):
        search(model, val_data=val, space={"ratios": [1.5]}, output_dir=tmp_path / "x")
    with pytest.raises(InputError, match="does not accept quantization 'float32'"):
        search(model, val_data=val, target="cortex-m7", space={"quantizations": ["float32"]},
               output_dir=tmp_path / "x")
    with pytest.raises(InputError, match="unknown sampler"):
        search(model, val_data=val, sampler="annealing", output_dir=tmp_path / "x")
    with pytest.raises(InputError, match="accuracy comes first"):
        search(model, val_data=val, objectives="latency,accuracy", output_dir=tmp_path / "x")
    with pytest.raises(InputError, match="unsupported scheme"):
        search(model, val_data=val, storage="redis://localhost/0", output_dir=tmp_path / "x")
    run = CliRunner().invoke(cli, ["compile", "--from-study", f"sqlite:///{tmp_path / 'none.db'}",
                                   "--study-name", "nope", "-o", str(tmp_path / "o")])
    assert isinstance(run.exception, InputError) and "none.db: no such file" in str(run.exception)
    assert not (tmp_path / "none.db").exists()


@pytest.mark.slow
def test_sensitivity_curves_plot_and_greedy_allocation(files, tmp_path):
    result = sensitivity(str(files / "digits.h5"), val_data=str(files / "val.npz"), target=SMALL_CPU,
                         ratios=(0.5, 0.75), quantize="float32", target_macs=(0.6,),
                         plot=tmp_path / "curves.png", json_path=tmp_path / "sens.json")
    assert [c["name"] for c in result["stages"]] == ["s0-8x8", "s1-4x4"]
    for c in result["stages"]:
        assert [p["ratio"] for p in c["points"]] == [0.0, 0.5, 0.75]
        assert c["points"][0]["accuracy"] == result["baseline"]["accuracy"]
        assert c["points"][2]["macs"] < c["points"][0]["macs"]
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)
    alloc = result["allocations"][0]
    assert set(alloc["per_stage"]) == {"s0-8x8", "s1-4x4"}
    if alloc["reached"]:
        assert alloc["estimated_macs_fraction"] <= 0.6
    assert json.loads((tmp_path / "sens.json").read_text())["format"] == "edgeprune-sensitivity/1"

    # the prior: search runs the allocation first (snapped to the space's stage ratios)
    found = search(str(files / "digits.h5"), val_data=str(files / "val.npz"), target=SMALL_CPU,
                   sampler="random", trials=1, latency_runs=3, sensitivity=str(tmp_path / "sens.json"),
                   space={"per_stage": True, "stage_ratios": [0.0, 0.5, 0.75], "quantizations": ["float32"]},
                   output_dir=tmp_path / "prior")
    first = found["trials"][0]["params"]
    assert {k[len("stage:"):]: v for k, v in first.items() if k.startswith("stage:")} == alloc["per_stage"]

    # one more allocation next to MAC and latency targets: prune --sensitivity FILE --target-macs F
    import edgeprune

    pruned = edgeprune.prune(files / "digits.h5", tmp_path / "greedy.h5", target_macs=0.6,
                             sensitivity=tmp_path / "sens.json")
    assert pruned.report["sensitivity_allocation"]["per_stage"] == alloc["per_stage"]
    by_name = {layer["name"]: layer for layer in pruned.report["layers"]}
    for stage in result["stages"]:
        for name in stage["producers"]:
            shrank = by_name[name]["channels_after"] < by_name[name]["channels_before"]
            assert shrank == (alloc["per_stage"][stage["name"]] > 0), name
    with pytest.raises(InputError, match="--sensitivity needs --target-macs"):
        edgeprune.prune(files / "digits.h5", tmp_path / "g2.h5", ratio=0.5, sensitivity=tmp_path / "sens.json")


def test_greedy_allocation_keeps_the_highest_accuracy_threshold():
    # stage a is robust, stage b is fragile: an 80 % MAC target must come from a first
    curves = [
        {"name": "a", "producers": ["a1"], "points": [
            {"ratio": 0.0, "accuracy": 0.9, "macs": 100}, {"ratio": 0.5, "accuracy": 0.89, "macs": 85},
            {"ratio": 0.75, "accuracy": 0.88, "macs": 75}]},
        {"name": "b", "producers": ["b1"], "points": [
            {"ratio": 0.0, "accuracy": 0.9, "macs": 100}, {"ratio": 0.5, "accuracy": 0.5, "macs": 85},
            {"ratio": 0.75, "accuracy": 0.3, "macs": 75}]},
    ]
    alloc = greedy_allocation(curves, 100, 0.8)
    assert alloc["reached"] and alloc["per_stage"] == {"a": 0.75, "b": 0.0}
    assert alloc["accuracy_threshold"] == 0.88 and alloc["per_layer"] == {"a1": 0.75}
    assert not greedy_allocation(curves, 100, 0.4)["reached"]  # both stages at 0.75 leave 50 %


@pytest.mark.slow
def test_remote_target_is_timed_on_the_device_not_here(files, tmp_path):
    """The old bug: --target rpi4 timed candidates locally. A profile reached over SSH (a real
    sshd on 127.0.0.1) is measured there, through the harness."""
    import sshd

    if not sshd.sshd_available():
        pytest.skip("sshd not installed")
    server = sshd.start_sshd(tmp_path / "sshd")
    try:
        profile = tmp_path / "pi.yaml"
        profile.write_text("name: testpi\ndescription: sshd on localhost\ncpu: any\narch: x86_64\ncores: 2\n"
                           "pruning:\n  round_to: 4\n  min_channels: 4\n"
                           f"connection:\n  kind: ssh\n  host: {server.aliases[0]}\n  python: {sys.executable}\n")
        os.environ["EDGEPRUNE_SSH_CONFIG"] = str(server.config)
        result = search(str(files / "digits.h5"), val_data=str(files / "val.npz"), target=str(profile),
                        sampler="grid", latency_runs=3, output_dir=tmp_path / "r",
                        space={"ratios": [0.0], "quantizations": ["int8"]})
    finally:
        os.environ.pop("EDGEPRUNE_SSH_CONFIG", None)
        server.stop()
    trial = result["trials"][0]
    assert trial["device"] == server.aliases[0] and trial["latency_ms"] > 0


def test_emulated_target_refuses_latency_objectives(files, tmp_path):
    from edgeprune.device.profiles import load_profile

    assert load_profile("rpi4-emulated").emulated and not load_profile("rpi4").emulated
    with pytest.raises(InputError, match="emulated"):
        search(str(files / "digits.h5"), val_data=str(files / "val.npz"), target="rpi4-emulated",
               objectives="accuracy,latency", output_dir=tmp_path / "e")
    with pytest.raises(InputError, match="emulated"):
        search(str(files / "digits.h5"), val_data=str(files / "val.npz"), target="rpi4-emulated",
               latency_table=str(tmp_path / "t.json"), output_dir=tmp_path / "e")


@pytest.mark.slow
def test_an_interrupted_grid_search_resumes_and_runs_the_interrupted_point(files, tmp_path):
    import signal
    import subprocess
    import time

    import optuna

    out = tmp_path / "i"
    cmd = [sys.executable, "-m", "edgeprune", "search", str(files / "digits.h5"), "--target", SMALL_CPU,
           "--val-data", str(files / "val.npz"), "--sampler", "grid", "--ratios", "0,0.5",
           "--quantize", "float32,int8", "--latency-runs", "3", "-o", str(out), "--study-name", "int"]
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": root})
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    # Interrupt one of the first three of the four grid points: on a loaded machine a poll can
    # first see the last one running, and the search may then end before the signal lands.
    deadline, running = time.time() + 120, None
    while time.time() < deadline and running is None and proc.poll() is None:
        time.sleep(0.1)
        try:
            running = next((t.number for t in _load(url, "int").trials
                            if t.state.name == "RUNNING" and t.params and t.number < 3), None)
        except Exception:  # the study is not created yet
            continue
    assert running is not None, "no early trial was seen running"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode}, interrupted trial {running}: {stderr[-2000:]}"
    study = _load(url, "int")
    assert study.trials[running].state == optuna.trial.TrialState.FAIL
    lost = study.trials[running].params

    result = search(str(files / "digits.h5"), val_data=str(files / "val.npz"), target=SMALL_CPU, sampler="grid",
                    latency_runs=3, space={"ratios": [0.0, 0.5], "quantizations": ["float32", "int8"]},
                    output_dir=out, study_name="int")
    done = [t["params"] for t in result["trials"] if t["state"] == "COMPLETE"]
    assert lost in done and len(done) == 4
    assert len({(p["ratio"], p["quantization"]) for p in done}) == 4
