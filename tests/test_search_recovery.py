"""Search trials recover, unpromising ones stop early, and the best get the full recovery.

Real parts: the converter, the interpreter, Keras training, Optuna with SQLite. A threshold
pruner makes "stop early" deterministic; the named pruners are Optuna's own.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import invoke_cli
from test_training_fixtures import digits, write_search_inputs

from edgeprune.base.errors import InputError
from edgeprune.cli import cli
from edgeprune.search import search
from edgeprune.search.space import RECOVERY_EPOCHS, Space, SpaceConfig

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = write_search_inputs(tmp_path_factory.mktemp("search-recovery"))
    x, y, _, _ = digits()
    np.savez(folder / "train.npz", x=x[:400], y=y[:400])
    return folder


def test_default_space_recovers_with_training_data_and_leaves_out_slow_int16x8():
    from edgeprune.device.profiles import load_profile

    profile = load_profile("x86-64")
    assert "int16x8" in [q.value for q in profile.quantization.allowed]
    trained = Space(SpaceConfig(), profile, [], trains=True)
    assert trained.distributions()["finetune_epochs"] == RECOVERY_EPOCHS and min(RECOVERY_EPOCHS) > 0
    assert "int16x8" not in trained.quantizations and "int8" in trained.quantizations
    assert Space(SpaceConfig(), profile, [], trains=False).distributions()["finetune_epochs"] == [0]
    named = Space(SpaceConfig(quantizations=["int16x8"]), profile, [], trains=True)
    assert named.quantizations == ["int16x8"]  # asked for by name: kept
    with pytest.raises(InputError, match="no --train-data"):
        Space(SpaceConfig(finetune_epochs=[3]), profile, [], trains=False)


def test_stopped_trials_count_and_leave_nothing_behind(files, tmp_path):
    import optuna

    out = tmp_path / "s"
    # every trial trails a 0.999 threshold after its first recovery epoch: all are stopped there
    result = search(str(files / "digits.h5"), val_data=str(files / "val.npz"), train_data=str(files / "train.npz"),
                    target=SMALL_CPU, sampler="random", trials=3, latency_runs=2, output_dir=out,
                    space={"ratios": [0.25, 0.5], "quantizations": ["float32"], "finetune_epochs": [3]},
                    pruner=optuna.pruners.ThresholdPruner(lower=0.999), final_epochs=0)
    trials = result["trials"]
    assert len([t for t in trials if t["stopped_early"]]) == 3  # the study ends after 3 trials
    assert all(t["state"] == "PRUNED" for t in trials)
    for t in trials:
        stop = t["stopped_early"]
        assert stop["epoch"] == 1 and 0.0 < stop["val_accuracy"] < 0.999
    assert result["best"] is None
    # a stopped trial's compile left no artifact directory and no temp dir behind
    trial_dirs = list((out / "trials").rglob("*"))
    assert not [p for p in trial_dirs if p.name == "model.tflite"]
    assert not [p for p in trial_dirs if p.name.startswith(".")]


def test_best_trials_get_the_full_recovery_and_from_study_ships_it(files, tmp_path):
    import optuna

    out = tmp_path / "s"
    result = search(str(files / "digits.h5"), val_data=str(files / "val.npz"), train_data=str(files / "train.npz"),
                    target=SMALL_CPU, sampler="grid", latency_runs=2, output_dir=out,
                    space={"ratios": [0.5, 0.75], "quantizations": ["float32"], "finetune_epochs": [1]},
                    pruner=optuna.pruners.ThresholdPruner(lower=0.0), final_epochs=3, final_top=1)
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE", "COMPLETE"]
    finals = [t for t in trials if t["final"]]
    assert len(finals) == 1  # --final-top 1: the most accurate feasible trial
    top = max(trials, key=lambda t: t["accuracy"])
    final = finals[0]["final"]
    assert finals[0]["number"] == top["number"] and final["epochs"] == 3
    assert Path(final["artifact"]).is_file() and final["feasible"]
    assert result["best"]["number"] == top["number"] and result["best"]["final"]["accuracy"] == final["accuracy"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["best"]["final"]["epochs"] == 3

    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    runner = CliRunner()
    shipped = runner.invoke(cli, ["compile", "--from-study", storage, "--study-name", result["study"]["name"],
                                  "--pick", "best", "-o", str(tmp_path / "ship"), "--json"])
    assert shipped.exit_code == 0, shipped.output
    manifest = json.loads((tmp_path / "ship" / "manifest.json").read_text())
    assert manifest["options"]["training"]["finetune_epochs"] == 3
    assert manifest["study"]["final_epochs"] == 3


def test_pruner_flags_are_checked(files, tmp_path):
    args = ["search", files / "digits.h5", "--val-data", files / "val.npz", "--target", SMALL_CPU,
            "-o", tmp_path / "s", "--train-data", files / "train.npz"]
    code, bad = invoke_cli(args + ["--sampler", "nsga2", "--pruner", "hyperband"])
    assert code == 2 and "single-objective" in str(bad.exception)
    code, bad = invoke_cli(args + ["--final-epochs", "-1"])
    assert code == 2 and "--final-epochs" in str(bad.exception)
    code, no_train = invoke_cli(["search", files / "digits.h5", "--val-data", files / "val.npz",
                                 "--target", SMALL_CPU, "-o", tmp_path / "t", "--finetune-epochs", "2"])
    assert code == 2 and "--train-data" in str(no_train.exception)


def test_named_pruners_are_optunas():
    import optuna

    from edgeprune.search.study import make_pruner

    assert isinstance(make_pruner("auto", max_epochs=4, objectives=1), optuna.pruners.HyperbandPruner)
    assert make_pruner("auto", max_epochs=1, objectives=1) is None  # one epoch: nothing to stop early
    assert make_pruner("auto", max_epochs=4, objectives=2) is None
    assert isinstance(make_pruner("halving", max_epochs=4, objectives=1), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("median", max_epochs=4, objectives=1), optuna.pruners.MedianPruner)
    with pytest.raises(InputError, match="no intermediate accuracy"):
        make_pruner("median", max_epochs=0, objectives=1)
