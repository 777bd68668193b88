"""The one metric definition and the one budget checker (pure numpy: no TensorFlow)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.base.errors import InputError
from edgeprune.device import budgets, metrics


def test_one_threshold_rule_for_sigmoid_and_logit_heads():
    y = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.2], [0.5], [0.9], [0.49], [0.51]])  # 0.5 counts as positive
    logits = np.log(probs / (1 - probs))                    # the same decisions as logits
    assert metrics.accuracy(probs, y) == metrics.accuracy(logits, y) == 1.0
    assert metrics.predicted_classes(np.array([[0.0]]), logits=True).tolist() == [1]


def test_softmax_logits_onehot_and_regression():
    out = np.array([[0.1, 0.7, 0.2], [2.0, -1.0, 0.5], [0.3, 0.3, 0.4]])
    assert metrics.metrics(out, np.array([1, 0, 0])) == {"accuracy": pytest.approx(2 / 3), "mse": None}
    assert metrics.metrics(out, np.eye(3)[[1, 0, 2]])["accuracy"] == 1.0
    reg = metrics.metrics(np.array([[1.0], [2.0]]), np.array([1.5, 2.0]))
    assert reg["accuracy"] is None and reg["mse"] == pytest.approx(0.125)
    per = metrics.per_output({"cls": out, "reg": np.array([[1.0], [2.0], [3.0]])},
                             {"cls": np.array([1, 0, 2]), "reg": np.array([1.0, 2.0, 3.5])})
    assert per["cls"]["accuracy"] == 1.0 and per["reg"]["mse"] == pytest.approx(0.25 / 3)


@pytest.mark.parametrize("y, message", [
    (np.array([0, 1, 5]), r"class indices in \[0, 2\].*found range \[0, 5\]"),
    (np.array([0.5, 1.0, 2.0]), "must be integers"),
    (np.array([0, 1]), "2 labels for 3 samples"),
    (np.array([0, np.nan, 1]), "NaN"),
])
def test_bad_labels_are_one_line_input_errors(y, message):
    with pytest.raises(InputError, match=message):
        metrics.metrics(np.ones((3, 3)), y)


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    ref = (rng.random(400) < 0.95).astype(float)
    cand = ref.copy()
    cand[rng.choice(400, 12, replace=False)] = 0  # the candidate loses some images
    lo, hi = metrics.drop_interval(ref, cand)
    drop = (ref.mean() - cand.mean()) * 100
    assert lo <= drop <= hi and lo > 0  # every difference goes one way: the drop is real
    # pairing: the same errors on the same images make no uncertainty about the drop ...
    assert metrics.drop_interval(ref, ref) == (-0.75, 0.75)  # ... beyond the rule of three (3/n)
    same = metrics.compare(np.eye(3)[[0, 1, 2]], np.eye(3)[[0, 1, 1]], np.array([0, 1, 2]))
    assert same["drop_points"] == pytest.approx(100 / 3, abs=1e-3) and same["samples"] == 3
    lo, hi = metrics.accuracy_interval(ref)
    assert lo < ref.mean() < hi


def test_budget_rows_modes_and_undecided():
    limits = budgets.Limits.of(None, max_model_bytes=1000, max_accuracy_drop=1.0)
    comparison = {"drop_points": 0.5, "drop_ci95": [-0.2, 1.4], "samples": 300,
                  "reference_accuracy": 0.9, "candidate_accuracy": 0.895}
    rows = budgets.check(limits, model_bytes=1200, arena_bytes=10, comparison=comparison)
    assert [r["budget"] for r in rows] == ["max_model_bytes", "max_accuracy_drop"]
    assert rows[0]["over_by"] == 200 and not rows[0]["ok"]
    assert rows[1]["ok"] and rows[1]["decided"] is False  # the interval holds the limit
    assert "300 gate images are too few to decide" in budgets.undecided_note(rows[1])
    upper = budgets.accuracy_row(1.0, comparison, "upper")
    assert not upper["ok"] and upper["actual"] == 1.4
    assert "--gate-mode upper" in budgets.describe(upper) and "too few to decide" in budgets.describe(upper)
    assert budgets.failures(rows) == ["max_model_bytes 1200 bytes > limit 1000 (over by 200 bytes, 20.0%)"]
    with pytest.raises(InputError, match="--gate-mode"):
        budgets.Limits.of(None, gate_mode="median")
