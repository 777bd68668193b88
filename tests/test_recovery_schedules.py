"""Recovery schedules: the learning rate follows --lr-schedule (one-cycle, constant, rewind) in
the optimizer that trains, distillation's temperature and alpha anneal epoch by epoch inside the
train step, for tf_keras and Keras 3 models; the settings reach TrainingOptions from flags, recipe
YAML and ``recover()``, and bad values give one error line naming the flag."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers_models import invoke_cli, tiny_keras3_cnn, tiny_tf_keras_cnn

import edgeprune.base.env as env
from edgeprune.base.console import Output
from edgeprune.base.errors import InputError
from edgeprune.training.data import Split
from edgeprune.training.finetune import (
    COSINE_FLOOR,
    ONE_CYCLE_START,
    FitSettings,
    finetune,
    learning_rate_schedule,
)

MAKERS = {"tf_keras": tiny_tf_keras_cnn, "keras3": tiny_keras3_cnn}


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype=np.float32), np.arange(n) % 10


def _keras(name):
    if name == "keras3":
        import keras

        return keras
    return env.tf_keras()


def _cosine(peak, done):
    return peak * 0.5 * (1 + math.cos(math.pi * done))


@pytest.mark.parametrize("flavour", MAKERS)
def test_schedule_values(flavour):
    keras = _keras(flavour)

    def values(spe=10, **kw):
        settings = FitSettings(epochs=kw.pop("epochs", 10), learning_rate=2.0, **kw)
        schedule = learning_rate_schedule(settings, spe, keras)
        return np.asarray(schedule(np.arange(settings.epochs * spe, dtype=np.float32)))  # every step at once

    cycle = values(lr_schedule="one-cycle", lr_warmup=0.2)  # 100 steps, 20 warming up
    assert cycle[0] == pytest.approx(2.0 * ONE_CYCLE_START)
    assert np.all(np.diff(cycle[:21]) > 0) and cycle[20] == pytest.approx(2.0) and cycle.max() == pytest.approx(2.0)
    assert np.all(np.diff(cycle[20:]) < 0) and cycle[-1] < 1e-3
    assert cycle[60] == pytest.approx(_cosine(2.0, 40 / 80), rel=1e-5)
    assert values(lr_schedule="one-cycle", lr_warmup=0.0)[0] == pytest.approx(2.0)  # no warm-up: cosine to 0
    # rewind: 10 recovery epochs of a 40-epoch cosine training start where epoch 30 of it was
    rewind = values(lr_schedule="rewind", original_epochs=40)
    assert rewind[0] == pytest.approx(_cosine(2.0, 30 / 40), rel=1e-5)
    assert rewind[50] == pytest.approx(_cosine(2.0, 35 / 40), rel=1e-5)
    assert np.all(np.diff(rewind) < 0) and rewind[-1] < 1e-3
    assert values(lr_schedule="rewind", original_epochs=10)[0] == pytest.approx(2.0)  # E = N: from the peak
    with pytest.raises(InputError, match="--original-epochs is 5: it must be at least 10"):
        values(lr_schedule="rewind", original_epochs=5)
    # constant and plateau keep the number; cosine is unchanged (Keras' CosineDecay to 5 %)
    assert learning_rate_schedule(FitSettings(learning_rate=2.0, lr_schedule="constant"), 10, keras) == 2.0
    cosine = values(lr_schedule="cosine")
    assert type(learning_rate_schedule(FitSettings(), 10, keras)).__name__ == "CosineDecay"
    assert cosine[0] == pytest.approx(2.0) and cosine[-1] == pytest.approx(2.0 * COSINE_FLOOR, rel=0.05)


def _lr_recorder(keras, seen: dict):
    """Records the learning rate each optimizer step used: tf_keras keeps it in a variable set by
    the step (read after it), Keras 3 computes it from the iteration count (read before it)."""
    legacy = keras is env.tf_keras()

    class Recorder(keras.callbacks.Callback):
        def _read(self):
            opt = self.model.optimizer
            return int(opt.iterations), float(np.asarray(opt.learning_rate))

        def on_train_batch_begin(self, batch, logs=None):
            if not legacy:
                step, lr = self._read()
                seen[step] = lr

        def on_train_batch_end(self, batch, logs=None):
            if legacy:
                step, lr = self._read()
                seen[step - 1] = lr

    return Recorder()


@pytest.mark.parametrize("flavour", MAKERS)
def test_training_follows_one_cycle_and_rewind(flavour):
    x, y = _data()  # 4 steps per epoch at batch 16
    model = MAKERS[flavour]()
    keras = env.keras_of(model)
    for kw, expected in (
        (dict(lr_schedule="one-cycle", lr_warmup=0.25),  # 12 steps: 3 rising, then 9 of cosine
         [0.04 + 0.96 * s / 3 for s in range(3)] + [_cosine(1.0, s / 9) for s in range(9)]),
        (dict(lr_schedule="rewind", original_epochs=5),  # replays epochs 2..5 of 5
         [_cosine(1.0, (8 + s) / 20) for s in range(12)]),
        (dict(lr_schedule="constant"), [1.0] * 12),
    ):
        seen: dict = {}
        settings = FitSettings(epochs=3, batch_size=16, learning_rate=1.0, early_stopping=False,
                               extra_callbacks=[_lr_recorder(keras, seen)], **kw)
        finetune(model, Split(x, y, "t"), None, task="sparse", settings=settings, output=Output(quiet=True))
        assert sorted(seen) == list(range(12)), kw
        np.testing.assert_allclose([seen[s] for s in range(12)], expected, rtol=1e-5, err_msg=str(kw))


def _distil(model, schedule, epochs=3, **kw):
    from edgeprune.training.distill import distill

    x, y = _data()
    keras = env.keras_of(model)
    used = []

    class Used(keras.callbacks.Callback):  # after the schedule's callback: what this epoch trains with
        def on_epoch_begin(self, epoch, logs=None):
            used.append((float(np.asarray(self.model.temperature)), float(np.asarray(self.model.alpha))))

    settings = FitSettings(epochs=epochs, batch_size=16, seed=0, early_stopping=False, label="distill",
                           extra_callbacks=[Used()])
    _, history = distill(model, MAKERS["tf_keras" if keras is env.tf_keras() else "keras3"](seed=1),
                         Split(x, y, "t"), None, task="sparse", temperature=4.0, alpha=0.5, schedule=schedule,
                         settings=settings, output=Output(quiet=True), **kw)
    return used, history


@pytest.mark.parametrize("flavour", MAKERS)
def test_distillation_anneals_inside_the_train_step(flavour):
    make = MAKERS[flavour]
    used, history = _distil(make(), "anneal", alpha_end=1.0)
    assert np.allclose(used, [(4.0, 0.5), (2.5, 0.75), (1.0, 1.0)])
    assert history["temperature"] == pytest.approx([4.0, 2.5, 1.0]) and history["alpha"] == pytest.approx([0.5, 0.75, 1.0])
    fixed, fixed_history = _distil(make(), "constant")
    assert fixed == [(4.0, 0.5)] * 3 and "temperature" not in fixed_history
    # the compiled train step reads the variables: the same first epoch, then other losses
    assert history["loss"][0] == pytest.approx(fixed_history["loss"][0], rel=1e-4)
    assert abs(history["loss"][2] - fixed_history["loss"][2]) > 0.05 * fixed_history["loss"][2]
    used, _ = _distil(make(), "anneal", epochs=2)  # alpha stays without alpha_end
    assert np.allclose(used, [(4.0, 0.5), (1.0, 0.5)])


def test_scheduled_loss_equals_the_fixed_one():
    from edgeprune.training.distill import distillation_loss

    tf = env.tf()
    s, t = np.array([[1.0, 2.0, 0.5]], np.float32), np.array([[0.5, 3.0, -1.0]], np.float32)
    for temperature, alpha in ((4.0, 0.5), (1.0, 0.0), (2.5, 1.0)):
        fixed = float(distillation_loss(s, t, np.array([1]), temperature=temperature, alpha=alpha))
        scheduled = float(distillation_loss(s, t, np.array([1]), temperature=tf.Variable(temperature),
                                            alpha=tf.Variable(alpha)))
        assert scheduled == pytest.approx(fixed, rel=1e-6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sched")
    tiny_tf_keras_cnn().save(root / "m.h5")
    x, y = _data(96)
    np.savez(root / "train.npz", x=x, y=y)
    return root


def test_cli_flags_reach_the_recovery(files, tmp_path):
    code, result = invoke_cli(["prune", files / "m.h5", "--ratio", "0.5", "--protect", "head", "-o", tmp_path / "p.h5",
                               "--train-data", files / "train.npz", "--finetune-epochs", "2", "--batch-size", "32",
                               "--lr-schedule", "one-cycle", "--lr-warmup", "0.3", "--distill",
                               "--distill-schedule", "anneal", "--distill-alpha-end", "0.9", "--json"])
    assert code == 0, result.output
    recovery = json.loads(result.stdout)["training"]["recovery"]
    assert recovery["lr_schedule"] == "one-cycle" and recovery["distill_schedule"] == "anneal"
    assert recovery["method"] == "distillation"


@pytest.mark.parametrize("args, needle", [
    (["--lr-schedule", "rewind", "--finetune-epochs", "3"], "--lr-schedule rewind needs --original-epochs"),
    (["--lr-schedule", "rewind", "--finetune-epochs", "3", "--original-epochs", "2"],
     "--original-epochs is 2: it must be at least 3"),
    (["--lr-schedule", "rewind", "--original-epochs", "4", "--finetune-epochs", "1", "--sparsity-epochs", "6"],
     "last --sparsity-epochs (6) epochs"),
    (["--lr-warmup", "1.5"], "training setting 'lr_warmup'"),
    (["--distill-alpha-end", "-0.1"], "training setting 'distill_alpha_end'"),
    (["--distill-schedule", "cyclic"], "'cyclic' is not one of"),
    (["--lr-schedule", "linear"], "'linear' is not one of"),
])
def test_bad_values_give_one_error_line(files, tmp_path, args, needle):
    code, result = invoke_cli(["prune", files / "m.h5", "--ratio", "0.5", "-o", tmp_path / "p.h5",
                               "--train-data", files / "train.npz", *args])
    assert code == 2
    message = str(result.exception) if result.exception and not isinstance(result.exception, SystemExit) \
        else result.output.strip().splitlines()[-1]
    assert needle in message and "\n" not in message and "Traceback" not in result.output
    assert not (tmp_path / "p.h5").exists()


def test_recipe_accepts_the_fields(tmp_path):
    from edgeprune.training.options import merge_options

    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr-schedule: rewind\noriginal-epochs: 30\nlr_warmup: 0.2\nfinetune-epochs: 8\n"
                      "distill-schedule: anneal\ndistill_alpha_end: 0.9\n")
    options = merge_options(str(recipe), {"distill_alpha": 0.3})
    assert (options.lr_schedule, options.original_epochs, options.lr_warmup) == ("rewind", 30, 0.2)
    assert (options.distill_schedule, options.distill_alpha_end, options.distill_alpha) == ("anneal", 0.9, 0.3)
    settings = FitSettings.from_options(options)
    assert (settings.lr_schedule, settings.original_epochs, settings.lr_warmup) == ("rewind", 30, 0.2)
    recipe.write_text("lr-schedule: rewind\noriginal-epochs: 4\nfinetune-epochs: 8\n")
    with pytest.raises(InputError, match=r"training settings \(from recipe .*r.yaml or flags\): --lr-schedule rewind"):
        merge_options(str(recipe), {})
    assert merge_options(str(recipe), {"original_epochs": 8}).original_epochs == 8  # a flag overrides


def test_every_flag_help_says_its_default():
    from edgeprune.training.options import _FLAGS

    for option, field in _FLAGS:
        help_text = option(lambda: None).__click_params__[0].help
        assert help_text.rstrip(".").endswith("]") and "[" in help_text, field


def test_recover_takes_the_schedules():
    from edgeprune.training.api import recover

    x, y = _data()
    model = tiny_keras3_cnn()
    tuned = recover(model, teacher=tiny_keras3_cnn(seed=1), train=(x, y), epochs=2, batch_size=32, distill=True,
                    distill_schedule="anneal", alpha_end=1.0, lr_schedule="rewind", original_epochs=3,
                    output=Output(quiet=True))
    assert tuned is not model and tuned.count_params() == model.count_params()
    with pytest.raises(InputError, match="--original-epochs is 1: it must be at least 2"):
        recover(model, train=(x, y), epochs=2, lr_schedule="rewind", original_epochs=1)
    with pytest.raises(InputError, match="distill_schedule"):
        recover(model, train=(x, y), epochs=1, distill_schedule="sometimes")
