"""Training data loading, splitting, label checks, recipes and flag merging."""
from __future__ import annotations

import textwrap

import click
import numpy as np
import pytest
from click.testing import CliRunner
from test_training_fixtures import small_cnn

from edgeprune.base.errors import InputError
from edgeprune.training.data import Split, check_against_model, load_split, resolve, split
from edgeprune.training.options import TrainingOptions, merge_options, training_options


@pytest.fixture(scope="module")
def model():
    return small_cnn()


def load_source(src, *, input_shape=(8, 8, 1)):
    """The one loader, for a model with this input shape (single output, 10 classes)."""
    from edgeprune.load.datasets import load_arrays

    x, y = load_arrays(src, input_shape=(None, *input_shape), flag="--train-data")
    return Split(x, y, src)


def _npz(tmp_path, x, y=None, name="d.npz"):
    path = tmp_path / name
    if y is None:
        np.savez(path, x=x)
    else:
        np.savez(path, x=x, y=y)
    return str(path)


def test_npz_loads_and_checks(tmp_path, model):
    x = np.random.rand(20, 8, 8, 1).astype(np.float32)
    y = np.arange(20) % 10
    data = load_source(_npz(tmp_path, x, y))
    assert data.x.shape == (20, 8, 8, 1) and data.y.tolist() == y.tolist()
    assert check_against_model(data, model) == "sparse"


def test_onehot_labels_accepted(tmp_path, model):
    x = np.random.rand(10, 8, 8, 1).astype(np.float32)
    y = np.eye(10, dtype=np.float32)
    assert check_against_model(load_source(_npz(tmp_path, x, y)), model) == "onehot"


def test_image_dir_classes_sorted(tmp_path, model):
    from PIL import Image

    for cls, value in (("b_cat", 200), ("a_dog", 10)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((16, 16), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_split(str(tmp_path), model, flag="--train-data")
    assert data.x.shape == (6, 8, 8, 1)
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1]  # a_dog = 0, b_cat = 1
    assert data.x[0].max() < 0.1 and data.x[-1].min() > 0.7


def test_module_function_dataset(tmp_path, monkeypatch, model):
    (tmp_path / "train_gen_data.py").write_text(textwrap.dedent("""
        import numpy as np
        def ds():
            import tensorflow as tf
            x = np.random.rand(12, 8, 8, 1).astype("float32")
            y = np.arange(12) % 10
            return tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
        def arrays():
            return np.zeros((4, 8, 8, 1), "float32"), np.array([0, 1, 2, 3])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_source("train_gen_data:ds")
    assert data.x.shape == (12, 8, 8, 1) and data.y.shape == (12,)
    assert load_source("train_gen_data:arrays").y.tolist() == [0, 1, 2, 3]
    with pytest.raises(InputError, match="'nope' is not a function"):
        load_source("train_gen_data:nope")


def test_split_is_seeded(model):
    data = Split(np.arange(100, dtype=np.float32).reshape(100, 1), np.arange(100), "s")
    a_train, a_val = split(data, 0.25, seed=3)
    b_train, b_val = split(data, 0.25, seed=3)
    assert len(a_val) == 25 and len(a_train) == 75
    assert a_val.y.tolist() == b_val.y.tolist()
    assert set(a_val.y) | set(a_train.y) == set(range(100))


@pytest.mark.parametrize(
    "y, message",
    [
        (np.arange(19) % 10, "20 samples but 19 labels"),
        (np.arange(20) % 12, r"\[0, 9\].*found range \[0, 11\]"),
        (np.full(20, -1), r"found range \[-1, -1\]"),
        (np.linspace(0, 3, 20), "must be integers"),
        (np.array(["a"] * 20), "must be numeric"),
        (np.eye(20, 7, dtype=np.float32), r"labels have shape \(7,\), the output has 10 units"),
    ],
)
def test_label_refusals(tmp_path, model, y, message):
    x = np.random.rand(20, 8, 8, 1).astype(np.float32)
    with pytest.raises(InputError, match=message):
        check_against_model(load_source(_npz(tmp_path, x, y)), model)


def test_nan_and_shape_refused(tmp_path, model):
    x = np.random.rand(5, 8, 8, 1).astype(np.float32)
    x[2, 1, 1, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        check_against_model(Split(x, np.arange(5), "a.npz"), model)
    y = np.array([0, 1, np.nan, 3, 4])
    with pytest.raises(InputError, match="NaN"):
        check_against_model(load_source(_npz(tmp_path, x * 0, y, "b.npz")), model)
    with pytest.raises(InputError, match=r"expected samples of shape \(N, 8, 8, 1\)"):
        check_against_model(Split(np.zeros((5, 4, 4, 1)), np.arange(5), "c.npz"), model)


def test_pickled_npz_refused(tmp_path):
    path = tmp_path / "p.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(InputError, match="without pickle"):
        load_source(str(path))


def test_resolve_checks_before_training(tmp_path, model):
    x = np.random.rand(30, 8, 8, 1).astype(np.float32)
    opts = TrainingOptions(train_data=_npz(tmp_path, x, np.arange(30) % 10), val_split=0.2)
    data = resolve(opts, model)
    # training selects on half of the validation split; the gate measures on the other half
    assert (len(data.train), len(data.val), len(data.gate), data.task) == (24, 3, 3, "sparse")
    gate_ids = {float(v) for v in data.gate.x.reshape(3, -1)[:, 0]}
    assert gate_ids.isdisjoint(float(v) for v in data.val.x.reshape(3, -1)[:, 0])
    assert gate_ids.isdisjoint(float(v) for v in data.train.x.reshape(24, -1)[:, 0])
    bad = TrainingOptions(train_data=opts.train_data, val_data=_npz(tmp_path, x, np.arange(30) + 5, "v.npz"))
    with pytest.raises(InputError, match="--val-data"):
        resolve(bad, model)
    unlabelled = resolve(TrainingOptions(distill=True), model, calibration=x)
    assert unlabelled.task == "unlabelled" and unlabelled.train.y is None


def test_recipe_unknown_key_names_key_and_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune-epochs: 3\nlearnin_rate: 0.1\n")
    with pytest.raises(InputError, match=r"r\.yaml.*unknown key 'learnin_rate'"):
        merge_options(str(recipe), {})


def test_recipe_bad_value(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("distill_alpha: 3\n")
    with pytest.raises(InputError, match="distill_alpha"):
        merge_options(str(recipe), {})


def test_flags_override_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune-epochs: 7\nbatch_size: 16\nsparsity-m-by-n: '2:4'\ndistill: true\n"
                      "per_layer_sparsity: {conv1: 0.3}\n")

    @click.command()
    @training_options
    def cmd(training):
        click.echo(training.model_dump_json())

    result = CliRunner().invoke(cmd, ["--recipe", str(recipe), "--batch-size", "8", "--no-distill",
                                      "--per-layer-sparsity", "dense=0.5"])
    assert result.exit_code == 0, result.output
    opts = TrainingOptions.model_validate_json(result.output)
    assert opts.finetune_epochs == 7 and opts.batch_size == 8 and opts.distill is False
    assert opts.sparsity_m_by_n == (2, 4) and opts.per_layer_sparsity == {"dense": 0.5}
    plain = CliRunner().invoke(cmd, [])
    assert TrainingOptions.model_validate_json(plain.output) == TrainingOptions()
    bad = CliRunner().invoke(cmd, ["--sparsity-m-by-n", "2-4"])
    assert isinstance(bad.exception, InputError) and "M:N" in str(bad.exception)


def test_decorator_with_context_and_other_options(tmp_path):
    @click.command()
    @click.argument("model")
    @training_options
    @click.option("--json", "json_mode", is_flag=True)
    @click.pass_context
    def cmd(ctx, model, training, json_mode):
        click.echo(f"{model} {json_mode} {training.finetune_epochs} {training.qat}")

    result = CliRunner().invoke(cmd, ["m.keras", "--qat", "--json", "--finetune-epochs", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "m.keras True 2 True"
    assert "--sparsity-m-by-n" in CliRunner().invoke(cmd, ["--help"]).output
