"""Fine-tuning and knowledge distillation recover a damaged model's accuracy."""
from __future__ import annotations

import math

import numpy as np
import pytest
from test_training_fixtures import acc, damaged, digits, quiet, trained_cnn

from edgeprune.base.errors import InputError
from edgeprune.training.api import recover
from edgeprune.training.data import Split
from edgeprune.training.finetune import FitSettings, finetune


def test_finetune_improves_damaged_model():
    x, y, xv, yv = digits()
    model = damaged(trained_cnn())
    before = acc(model, xv, yv)
    tuned, history = finetune(model, Split(x, y, "t"), Split(xv, yv, "v"), task="sparse",
                              settings=FitSettings(epochs=4, batch_size=64), output=quiet())
    after = acc(tuned, xv, yv)
    assert after > before + 0.05 and after > 0.85
    assert "val_accuracy" in history and tuned is not model
    assert type(tuned.layers[-1]).__name__ == "Dense" and not tuned._is_compiled


def test_distillation_loss_matches_hand_computation():
    from edgeprune.base.env import tf

    tf()
    s = np.array([[1.0, 2.0, 0.5]], np.float32)
    t = np.array([[0.5, 3.0, -1.0]], np.float32)
    T, alpha, label = 2.0, 0.3, 1

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    p_t, p_s = softmax(t[0] / T), softmax(s[0] / T)
    kl = float(np.sum(p_t * np.log(p_t / p_s)))
    hard = -math.log(softmax(s[0])[label])
    expected = alpha * hard + (1 - alpha) * T * T * kl
    from edgeprune.training.distill import distillation_loss

    got = float(distillation_loss(s, t, np.array([label]), temperature=T, alpha=alpha))
    assert got == pytest.approx(expected, rel=1e-5)
    onehot = float(distillation_loss(s, t, np.eye(3)[[label]], temperature=T, alpha=alpha, task="onehot"))
    assert onehot == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(s, t, None, temperature=T)) == pytest.approx(T * T * kl, rel=1e-5)
    assert float(distillation_loss(t, t, None, temperature=T)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_logits_both_ways():
    from edgeprune.base.env import tf_keras
    from edgeprune.training.distill import teacher_logits_model

    k = tf_keras()
    model = trained_cnn()
    x = digits()[2][:32]
    split, mode = teacher_logits_model(model, x)
    assert mode == "logits"
    # a softmax the graph cannot see through (Lambda) is read as log-probabilities
    inner = k.Model(model.inputs, model.layers[-1].output)
    wrapped = k.Model(inner.inputs, k.layers.Lambda(lambda p: p * 1.0)(inner.output))
    logp, mode2 = teacher_logits_model(wrapped, x)
    assert mode2 == "log-probs"
    a, b = split.predict(x, verbose=0), logp.predict(x, verbose=0)
    # both give back the same probabilities (log p saturates only where p underflows)
    def sm(v):
        e = np.exp(v - v.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    np.testing.assert_allclose(sm(a), sm(b), atol=1e-5)
    np.testing.assert_allclose(sm(a), model.predict(x, verbose=0), atol=1e-5)


def test_distilled_student_improves():
    x, y, xv, yv = digits()
    teacher = trained_cnn()
    student = damaged(trained_cnn(), fraction=0.7)
    before = acc(student, xv, yv)
    out = recover(student, teacher=teacher, train=(x, y), val=(xv, yv), epochs=4, distill=True,
                  temperature=4.0, alpha=0.5, batch_size=64, output=quiet())
    after = acc(out, xv, yv)
    assert after > before + 0.05 and after > 0.85
    assert [type(l).__name__ for l in out.layers] == [type(l).__name__ for l in teacher.layers]


def test_label_free_distillation_recovers():
    x, _, xv, yv = digits()
    teacher = trained_cnn()
    student = damaged(trained_cnn(), fraction=0.7)
    before = acc(student, xv, yv)
    out = recover(student, teacher=teacher, train=x, val=xv, epochs=4, batch_size=64, output=quiet())
    after = acc(out, xv, yv)
    assert after > before + 0.05


def test_distill_refuses_without_teacher():
    x, y, _, _ = digits()
    with pytest.raises(InputError, match="teacher"):
        recover(trained_cnn(), train=(x[:50], y[:50]), epochs=1, distill=True, output=quiet())
    with pytest.raises(InputError, match="labels"):
        recover(trained_cnn(), train=(x[:50], y[:50] + 20), epochs=1, output=quiet())
