"""One option, one name in every command; old names keep working as hidden aliases; and
``edgeprune.prune`` takes what ``edgeprune prune`` takes."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers_models import invoke_cli, tiny_tf_keras_cnn

import edgeprune
from edgeprune.base.errors import InputError
from edgeprune.cli import cli

RENAMED = {("compile", "--prune"): "--ratio", ("compile", "--prune-macs"): "--target-macs",
           ("compile", "--prune-latency"): "--target-latency", ("prune", "--data"): "--calibration",
           ("latency-table", "--quantization"): "--latency-quantization", ("bench", "--eval"): "--val-data",
           ("inspect", "--data"): "--calibration"}


def _options(command):
    return {opt: p for p in command.params for opt in getattr(p, "opts", []) if opt.startswith("--")}


def test_old_names_are_hidden_and_new_names_shared():
    for (name, old), new in RENAMED.items():
        command = cli.commands[name]
        shown = CliRunner().invoke(cli, [name, "--help"]).output
        assert f"{old} " not in shown and f"{old}\n" not in shown, (name, old)
        assert new in shown, (name, new)
        assert _options(command)[old].hidden
    # the pruning target and data flags have the same names in compile and prune
    compile_opts, prune_opts = _options(cli.commands["compile"]), _options(cli.commands["prune"])
    for flag in ("--ratio", "--target-macs", "--target-latency", "--latency-table", "--criterion", "--protect",
                 "--calibration", "--input-shape", "--seed", "--target", "--custom-objects", "--unsafe"):
        assert flag in compile_opts and flag in prune_opts, flag
    for name, command in cli.commands.items():
        if "--target" in _options(command):
            assert "-t" in _options(command)["--target"].opts, name


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("names")
    tiny_tf_keras_cnn().save(root / "m.h5")
    rng = np.random.default_rng(0)
    np.savez(root / "train.npz", x=rng.uniform(0, 1, (64, 8, 8, 1)).astype(np.float32), y=rng.integers(0, 10, 64))
    return root


def test_deprecated_alias_still_works_and_warns(model_file, tmp_path):
    result = CliRunner().invoke(cli, ["prune", str(model_file / "m.h5"), "--ratio", "0.5", "--criterion", "taylor",
                                      "--data", str(model_file / "train.npz"), "-o", str(tmp_path / "p.h5"), "--json"])
    assert result.exit_code == 0, result.output
    assert "--data is deprecated, use --calibration" in result.output
    assert (tmp_path / "p.h5").exists()
    code, result = invoke_cli(["compile", model_file / "m.h5", "--prune-macs", "0.5", "--target-macs", "0.4",
                               "-o", tmp_path / "art"])
    assert code == 2 and "--prune-macs is the old name of --target-macs" in str(result.exception)


def test_python_prune_takes_the_training_options(model_file, tmp_path):
    result = edgeprune.prune(model_file / "m.h5", tmp_path / "p.h5", ratio=0.5, protect=("head",),
                             train_data=str(model_file / "train.npz"), finetune_epochs=1, batch_size=16)
    assert result.report["training"]["recovery"]["method"] == "fine-tuning"
    assert result.report["params_after"] < result.report["params_before"]
    assert (tmp_path / "p.h5").exists()
    with pytest.raises(InputError, match="exactly one of --ratio, --target-macs or --target-latency"):
        edgeprune.prune(model_file / "m.h5", tmp_path / "q.h5", ratio=0.5, target_macs=0.5)
    with pytest.raises(InputError, match="finetune_epochs"):
        edgeprune.prune(model_file / "m.h5", tmp_path / "q.h5", ratio=0.5, finetune_epochs=-1)
    assert not (tmp_path / "q.h5").exists()
