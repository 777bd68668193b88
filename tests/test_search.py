"""Budgeted search: real pruning, conversion and interpreter measurements on a tiny digits CNN."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeprune.cli import cli
from edgeprune.errors import InputError
from edgeprune.search import SearchSpace, Trial, pareto_front, search
from test_training_fixtures import digits, trained_cnn

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")  # rounds channels to 4


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    model_path = tmp / "digits.h5"
    trained_cnn().save(model_path)
    _, _, x_val, y_val = digits()
    val = tmp / "val.npz"
    np.savez(val, x=x_val, y=y_val)
    return model_path, val, tmp


def test_grid_search_measures_every_point_and_picks_a_feasible_best(model_and_data):
    model_path, val, _ = model_and_data
    result = search(str(model_path), val_data=str(val), target=SMALL_CPU,
                    space=SearchSpace(ratios=(0.0, 0.5), criteria=("l1",),
                                      quantizations=("float32", "int8")),
                    sampler="grid", latency_runs=5)
    trials = result["trials"]
    assert len(trials) == 4
    assert {(t["ratio"], t["quantization"]) for t in trials} == {
        (0.0, "float32"), (0.0, "int8"), (0.5, "float32"), (0.5, "int8")}
    for t in trials:
        assert t["error"] is None and t["latency_ms"] > 0 and 0 <= t["accuracy"] <= 1
    by_key = {(t["ratio"], t["quantization"]): t for t in trials}
    # int8 is ~4x smaller than float32; pruning half the channels shrinks the model too.
    assert by_key[(0.0, "int8")]["model_bytes"] < by_key[(0.0, "float32")]["model_bytes"] / 2
    assert by_key[(0.5, "float32")]["model_bytes"] < by_key[(0.0, "float32")]["model_bytes"]
    # The unpruned float32 trial reproduces the Keras model's accuracy.
    assert abs(by_key[(0.0, "float32")]["accuracy"] - result["baseline"]["accuracy"]) < 1e-6
    best = result["best"]
    assert best["accuracy"] == max(t["accuracy"] for t in trials if t["feasible"])
    assert result["pareto"]


def test_budget_that_nothing_meets_exits_1_with_the_violations(model_and_data, tmp_path):
    model_path, val, _ = model_and_data
    profile = tmp_path / "tiny.yaml"
    profile.write_text(
        "name: tiny\ndescription: too small\ncpu: x\narch: x86_64\ncores: 1\n"
        "budgets:\n  max_model_bytes: 100\n"
    )
    result = CliRunner().invoke(cli, [
        "search", str(model_path), "--target", str(profile), "--val-data", str(val),
        "--ratios", "0.5", "--quantize", "int8", "--latency-runs", "3", "--json"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["best"] is None
    assert "model" in doc["trials"][0]["violations"][0]


def test_random_and_bayes_samplers_run_the_requested_trials(model_and_data):
    model_path, val, _ = model_and_data
    for sampler in ("random", "bayes"):
        result = search(str(model_path), val_data=str(val), sampler=sampler, trials=2,
                        space=SearchSpace(ratios=(0.25, 0.5), quantizations=("float32",)),
                        latency_runs=3)
        trials = result["trials"]
        assert len(trials) in (1, 2)  # a repeated point of the 2-point space is measured once
        assert all(t["error"] is None and t["ratio"] in (0.25, 0.5) and t["latency_ms"] > 0 for t in trials)


def test_bad_search_input(model_and_data):
    model_path, val, _ = model_and_data
    with pytest.raises(InputError, match="outside"):
        search(str(model_path), val_data=str(val), space=SearchSpace(ratios=(1.5,)))
    with pytest.raises(InputError, match="not allowed by the profile"):
        search(str(model_path), val_data=str(val), target="cortex-m7",
               space=SearchSpace(quantizations=("float32",)))
    with pytest.raises(InputError, match="unknown sampler"):
        search(str(model_path), val_data=str(val), sampler="annealing")


def test_pareto_front_drops_dominated_trials():
    a = Trial(0, 0.0, "l1", "float32", accuracy=0.99, latency_ms=2.0)
    b = Trial(1, 0.5, "l1", "float32", accuracy=0.97, latency_ms=1.0)
    c = Trial(2, 0.25, "l1", "float32", accuracy=0.96, latency_ms=1.5)  # dominated by b
    assert [t.number for t in pareto_front([a, b, c])] == [1, 0]
