"""The leftover warts of "no silent surprises" (issue 20), each met by a newcomer:

- ``inspect DIR --quant-error`` without ``--reference`` compares with the pruned float model
  compile kept (one note line), and without one names the flag in one error line;
- plain ``inspect`` prints short tensor names (full ones in ``--json``);
- ``bench`` of an artifact compiled for a local profile runs that profile's threads and says so;
- ``verify BUNDLE.tar.gz`` names the bundle and its member, never the temporary folder;
- a search trial the TFLM runtime refuses is infeasible to Optuna (a positive constraint);
- ``compile --from-study`` names the true reason a rebuilt artifact differs;
- a SavedModel's identity covers its weights (variables/), not only saved_model.pb.

Real parts throughout: the converter, LiteRT, TFLM's pre-checks, Optuna on SQLite.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_models import digits_like, invoke_cli, tiny_tf_keras_cnn
from report_helpers import labelled_by, prunable_cnn

import edgeprune.base.env as _env
from edgeprune.base.errors import InputError

SMALL_CPU = Path(__file__).parent / "data" / "small-cpu.yaml"


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A pruned int8 artifact compiled for a local profile that runs 2 threads."""
    root = tmp_path_factory.mktemp("warts")
    profile = root / "two-threads.yaml"
    profile.write_text(SMALL_CPU.read_text().replace("name: small-cpu", "name: two-threads")
                       .replace("threads: 1", "threads: 2"))
    model = prunable_cnn()
    model.save(root / "m.h5")
    x, y = labelled_by(model, 48)
    np.savez(root / "x.npz", x=x, y=y)
    code, result = invoke_cli(["compile", root / "m.h5", "--target", profile, "--ratio", "0.5", "--quantize",
                               "int8", "--calibration", root / "x.npz", "-o", root / "out"])
    assert code == 0, result.output
    return root


def _error_line(result) -> str:
    msg = str(result.exception)
    assert "\n" not in msg and "Traceback" not in result.output
    return msg


# 1. --quant-error without --reference ------------------------------------------------------------

def test_quant_error_defaults_to_the_kept_pruned_model(pruned):
    args = ["inspect", pruned / "out", "--quant-error", "--calibration", pruned / "x.npz", "--num-samples", "4"]
    code, result = invoke_cli(args)
    assert code == 0, result.output
    said = [line for line in result.output.splitlines() if "the pruned float model compile kept" in line]
    assert len(said) == 1 and str(pruned / "out" / "pruned.h5") in said[0] and "--reference" in said[0]
    code, result = invoke_cli([*args, "--json"])
    doc = json.loads(result.stdout)
    assert doc["reference"] == str(pruned / "out" / "pruned.h5") and doc["reference_given"] is None
    assert doc["unmatched"] == [] and doc["compared"] >= 5


def test_quant_error_without_any_float_model_names_the_flag(pruned, tmp_path):
    bare = tmp_path / "model.tflite"  # a .tflite on its own: no artifact directory, no kept model
    shutil.copy(pruned / "out" / "model.tflite", bare)
    code, result = invoke_cli(["inspect", bare, "--quant-error", "--calibration", pruned / "x.npz"])
    assert code == 2
    msg = _error_line(result)
    assert msg.startswith(f"{bare}: no float model to compare with") and "pass --reference MODEL" in msg


# 2. the activation table of plain inspect ---------------------------------------------------------

def test_inspect_table_shortens_fused_names_and_json_keeps_them(pruned):
    code, result = invoke_cli(["inspect", pruned / "out"])
    assert code == 0, result.output
    assert "prunable/conv1/Relu;prunable/conv1/Conv2D" not in result.output  # the fused name in full
    assert "conv1/Relu +1" in result.output and "--json gives them in full" in result.output
    code, result = invoke_cli(["inspect", pruned / "out", "--json"])
    names = {t["name"] for t in json.loads(result.stdout)["tensors"]}
    assert "prunable/conv1/Relu;prunable/conv1/Conv2D" in names


# 3. bench threads from the artifact's own profile -------------------------------------------------

def test_bench_runs_the_threads_of_the_profile_it_was_compiled_for(pruned):
    base = ["bench", pruned / "out", "--runs", "2", "--warmup", "0"]
    code, result = invoke_cli(base)
    assert code == 0, result.output
    said = [line for line in result.output.splitlines() if "the profile model.tflite was compiled for" in line]
    assert len(said) == 1 and said[0].startswith("2 thread(s)") and "'two-threads'" in said[0]
    code, result = invoke_cli([*base, "--json"])
    doc = json.loads(result.stdout)
    assert doc["settings"]["threads"] == [2] and [r["threads"] for r in doc["devices"][0]["results"]] == [2]
    code, result = invoke_cli([*base, "--threads", "1", "--json"])  # asked for: nothing to say
    doc = json.loads(result.stdout)
    assert doc["settings"]["threads"] == [1] and "threads_note" not in doc["settings"]


# 4. verify names the bundle -----------------------------------------------------------------------

@pytest.mark.parametrize("manifest, problem", [
    ("{not json", "not valid JSON"),
    ('{"artifact": "model.tflite"}', "no 'artifact' entry"),
])
def test_verify_of_a_bundle_with_a_bad_manifest_names_the_bundle(pruned, tmp_path, manifest, problem):
    art = tmp_path / "art"
    shutil.copytree(pruned / "out", art)
    (art / "manifest.json").write_text(manifest)
    bundle = tmp_path / "b.tar.gz"
    code, result = invoke_cli(["pack", art, "-o", bundle])
    assert code == 0, result.output
    code, result = invoke_cli(["verify", bundle])
    assert code == 1
    msg = _error_line(result)
    assert msg.startswith(f"{bundle}: member 'manifest.json': {problem}") and "edgeprune-verify-" not in msg


def test_verify_of_a_bundle_with_a_changed_file_names_its_member(pruned, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(pruned / "out", art)
    with open(art / "report.md", "a") as fh:
        fh.write("edited\n")
    bundle = tmp_path / "b.tar.gz"
    invoke_cli(["pack", art, "-o", bundle])
    code, result = invoke_cli(["verify", bundle])
    assert code == 1 and _error_line(result).startswith(f"{bundle}: member 'report.md': sha256 ")


# 5. a trial the runtime refuses is infeasible -----------------------------------------------------

def _flat_logits():
    """Logits that barely vary: TFLM's int8 softmax would abort (tflm.predicted_aborts)."""
    tk = _env.tf_keras()
    inputs = tk.Input((8,), name="x")
    outputs = tk.layers.Dense(4, activation="softmax", kernel_initializer=tk.initializers.Constant(1e-9),
                              bias_initializer="zeros")(inputs)
    return tk.Model(inputs, outputs, name="flat")


def test_a_trial_tflm_refuses_gets_a_positive_constraint(tmp_path):
    import optuna

    from edgeprune.device.profiles import load_profile
    from edgeprune.search.pipeline import Base, run_trial
    from edgeprune.search.space import Choice
    from edgeprune.search.study import CONSTRAINTS, constraints_of

    _flat_logits().save(tmp_path / "flat.h5")
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 8), dtype=np.float32), np.arange(16) % 4
    np.savez(tmp_path / "val.npz", x=x, y=y)
    base = Base(model=str(tmp_path / "flat.h5"), target="cortex-m7", val_data=str(tmp_path / "val.npz"))
    choice = Choice(ratio=0.0, stage_ratios={}, criterion="l1", round_to=4, quantization="int8",
                    finetune_epochs=0, distill=False)
    res = run_trial(base, choice, [], tmp_path / "trial", eval_data=(x, y), latency=None,
                    profile=load_profile("cortex-m7"))
    assert res.status == "rejected" and res.constraints["runtime"] > 0
    assert any(v.startswith("tflm cannot run it: SOFTMAX input") for v in res.violations)
    assert all(v <= 0 for k, v in res.constraints.items() if k != "runtime")  # within every budget
    trial = optuna.trial.create_trial(value=0.5, user_attrs={"constraints": res.constraints})
    vector = constraints_of(trial)
    assert len(vector) == len(CONSTRAINTS) and max(vector) > 0  # what a constrained sampler sees


# 6. compile --from-study names the true reason ----------------------------------------------------

def test_from_study_without_training_names_what_differs(tmp_path):
    tiny_tf_keras_cnn(seed=0).save(tmp_path / "model.h5")
    np.savez(tmp_path / "val.npz", x=digits_like(24), y=np.arange(24) % 10)
    code, result = invoke_cli(["search", tmp_path / "model.h5", "--val-data", tmp_path / "val.npz", "--target",
                               SMALL_CPU, "--sampler", "grid", "--ratios", "0", "--quantize", "int8",
                               "--latency-runs", "2", "--final-epochs", "0", "--study-name", "one",
                               "-o", tmp_path / "s"])
    assert code == 0, result.output
    ship = ["compile", "--from-study", f"sqlite:///{tmp_path / 's' / 'study.db'}", "--study-name", "one"]
    code, result = invoke_cli([*ship, "-o", tmp_path / "same"])
    assert code == 0, result.output
    assert "differs" not in result.output  # the same bytes: nothing to say
    # the calibration data (here the validation data) changed since the search: no training
    np.savez(tmp_path / "val.npz", x=digits_like(24, seed=7), y=np.arange(24) % 10)
    code, result = invoke_cli([*ship, "-o", tmp_path / "other"])
    assert code == 0, result.output
    said = [line for line in result.output.splitlines() if "differs from trial 0" in line]
    assert len(said) == 1 and "other calibration data" in said[0]
    assert "training" not in said[0] and "reproducible" not in said[0]


# 7. a SavedModel's identity covers its variables --------------------------------------------------

def test_savedmodel_identity_covers_its_variables(tmp_path):
    from edgeprune.load.model_io import load_model, model_sha256, sha256_file
    from edgeprune.search.ship import _check_study_model

    searched, retrained = tmp_path / "searched", tmp_path / "retrained"
    tiny_tf_keras_cnn(seed=0).save(searched, save_format="tf")
    tiny_tf_keras_cnn(seed=1).save(tmp_path / "seed1", save_format="tf")
    shutil.copytree(searched, retrained)  # the same graph, other weights
    shutil.rmtree(retrained / "variables")
    shutil.copytree(tmp_path / "seed1" / "variables", retrained / "variables")
    assert sha256_file(searched / "saved_model.pb") == sha256_file(retrained / "saved_model.pb")
    assert model_sha256(searched) != model_sha256(retrained)
    copy = tmp_path / "copy"
    shutil.copytree(searched, copy)
    assert model_sha256(copy) == model_sha256(searched)  # paths are relative: a copy is the same model
    recorded = load_model(searched).sha256
    assert recorded == model_sha256(searched) != load_model(retrained).sha256
    with pytest.raises(InputError, match=r"a different model from the one study 's' searched"):
        _check_study_model(retrained, str(retrained), str(searched), recorded, "s")
    _check_study_model(copy, str(copy), str(searched), recorded, "s")  # accepted


# 8. a small model on a profile whose rounding stops the pruning ------------------------------------

def test_unreachable_target_names_the_rounding_and_compile_takes_round_to(pruned, tmp_path):
    """x86-64 keeps channels in multiples of 16, at least 16: a 16/32-channel CNN cannot lose half
    its MACs. The message says that rounding is why, and compile takes --round-to/--min-channels."""
    args = ["compile", pruned / "m.h5", "--target", "x86-64", "--target-macs", "0.3", "-o", tmp_path / "o"]
    code, result = invoke_cli(args)
    assert code == 2
    line = _error_line(result)
    assert "unreachable" in line and "min_channels" in line and "--round-to 1" in line
    code, result = invoke_cli(args[:-2] + ["--round-to", "1", "--min-channels", "1", "-o", tmp_path / "o2"])
    assert code == 0, result.output
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    assert report["pruning"]["macs_after"] <= 0.3 * report["pruning"]["macs_before"]
