"""Search pruning ratio, criterion and quantization under a device budget.

Each trial is a real candidate: the model is pruned (structurally), optionally fine-tuned
briefly, converted with the trial's quantization, measured with the LiteRT interpreter for
accuracy on validation data and for latency, and checked against the profile's budgets.
Optuna drives the search: ``grid`` (every combination), ``random`` or ``bayes`` (TPE).
The result ranks feasible trials by accuracy and lists the accuracy/latency Pareto front,
the way Edge Impulse's EON Tuner lets users filter trials against a device budget.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeprune.console import Output, default_output
from edgeprune.errors import InputError

SAMPLERS = ("grid", "random", "bayes")


@dataclass
class SearchSpace:
    """The values a trial may take. Ratios are fractions of channels removed per group."""

    ratios: Sequence[float] = (0.0, 0.25, 0.5, 0.75)
    criteria: Sequence[str] = ("l1",)
    quantizations: Sequence[str] = ("float32", "int8")

    def validate(self, allowed_quantizations: Sequence[str]) -> None:
        for r in self.ratios:
            if not 0.0 <= r < 1.0:
                raise InputError(f"search ratio {r} is outside [0, 1)")
        bad = [q for q in self.quantizations if q not in allowed_quantizations]
        if bad:
            raise InputError(
                f"quantization {', '.join(bad)} not allowed by the profile "
                f"(allowed: {', '.join(allowed_quantizations)})"
            )
        if not self.ratios or not self.criteria or not self.quantizations:
            raise InputError("the search space is empty")

    @property
    def size(self) -> int:
        return len(self.ratios) * len(self.criteria) * len(self.quantizations)


@dataclass
class Trial:
    number: int
    ratio: float
    criterion: str
    quantization: str
    accuracy: float | None = None
    latency_ms: float | None = None
    model_bytes: int | None = None
    macs: int | None = None
    feasible: bool = False
    violations: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def _check_budgets(trial: Trial, profile, baseline_accuracy: float | None) -> None:
    budgets = profile.budgets
    if budgets.max_model_bytes and trial.model_bytes and trial.model_bytes > budgets.max_model_bytes:
        trial.violations.append(f"model {trial.model_bytes} B > {budgets.max_model_bytes} B")
    if budgets.max_latency_ms and trial.latency_ms and trial.latency_ms > budgets.max_latency_ms:
        trial.violations.append(f"latency {trial.latency_ms:.3f} ms > {budgets.max_latency_ms} ms")
    if (
        budgets.max_accuracy_drop is not None
        and baseline_accuracy is not None
        and trial.accuracy is not None
        and (baseline_accuracy - trial.accuracy) * 100 > budgets.max_accuracy_drop
    ):
        drop = (baseline_accuracy - trial.accuracy) * 100
        trial.violations.append(f"accuracy drop {drop:.2f} pt > {budgets.max_accuracy_drop} pt")
    trial.feasible = trial.error is None and not trial.violations


def _latency_ms(tflite_path: Path, threads: int, runs: int) -> float:
    """Median latency from the same harness ``edgeprune bench`` uses (runner subprocess)."""
    from edgeprune.harness.api import bench

    result = bench(str(tflite_path), threads=(threads,), runs=runs, warmup=2)
    return float(result["devices"][0]["results"][0]["steady"]["p50_ms"])


def pareto_front(trials: Sequence[Trial]) -> list[Trial]:
    """Trials not dominated in (higher accuracy, lower latency)."""
    done = [t for t in trials if t.error is None and t.accuracy is not None and t.latency_ms]
    front = []
    for t in done:
        dominated = any(
            o.accuracy >= t.accuracy and o.latency_ms <= t.latency_ms
            and (o.accuracy > t.accuracy or o.latency_ms < t.latency_ms)
            for o in done
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=lambda t: t.latency_ms)


def search(
    model_path: str,
    *,
    target: str = "x86-64",
    val_data: str,
    calibration: str | None = None,
    space: SearchSpace | None = None,
    sampler: str = "grid",
    trials: int | None = None,
    finetune_epochs: int = 0,
    train_data: str | None = None,
    latency_runs: int = 20,
    seed: int = 0,
    safe_mode: bool = True,
    custom_objects: str | None = None,
    output: Output | None = None,
) -> dict:
    """Run a budgeted search and return ``{"trials", "best", "pareto", "baseline"}``.

    ``val_data`` must be labelled (x and y); it scores every trial with the interpreter.
    """
    from edgeprune.convert import convert
    from edgeprune.datasets import load_arrays
    from edgeprune.harness.api import evaluate_tflite
    from edgeprune.model_io import load_model
    from edgeprune.profiles import load_profile
    from edgeprune.pruning.api import prune_model

    out = output or default_output()
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler '{sampler}' (choose from {', '.join(SAMPLERS)})")
    profile = load_profile(target)
    space = space or SearchSpace(quantizations=tuple(q.value for q in profile.quantization.allowed))
    space.validate([q.value for q in profile.quantization.allowed])
    n_trials = trials if trials is not None else space.size
    if n_trials < 1:
        raise InputError("--trials must be at least 1")

    loaded = load_model(model_path, custom_objects=custom_objects, safe_mode=safe_mode)
    input_shape = tuple(loaded.model.inputs[0].shape)  # batch dim included
    x_val, y_val = load_arrays(val_data, input_shape=input_shape)
    if y_val is None:
        raise InputError(f"{val_data}: the search needs labelled validation data (x and y)")
    if calibration:
        x_cal, _ = load_arrays(calibration, input_shape=input_shape, num_samples=200, seed=seed)
    else:
        x_cal = x_val[:200]
    train = None
    if finetune_epochs:
        if not train_data:
            raise InputError("--finetune-epochs needs --train-data")
        train = load_arrays(train_data, input_shape=input_shape)

    baseline_pred = loaded.model.predict(x_val, verbose=0)
    baseline_accuracy = float(np.mean(np.argmax(baseline_pred, -1) == _labels(y_val)))

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler == "grid":
        optuna_sampler = optuna.samplers.GridSampler(
            {"ratio": list(space.ratios), "criterion": list(space.criteria),
             "quantization": list(space.quantizations)}, seed=seed)
        n_trials = min(n_trials, space.size)
    elif sampler == "random":
        optuna_sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        optuna_sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, n_trials))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna_sampler)
    results: list[Trial] = []
    seen: dict[tuple, Trial] = {}

    with tempfile.TemporaryDirectory(prefix="edgeprune-search-") as tmp, \
            out.progress("search", total=n_trials) as bar:

        def objective(ot) -> tuple[float, float]:
            ratio = ot.suggest_categorical("ratio", list(space.ratios))
            criterion = ot.suggest_categorical("criterion", list(space.criteria))
            quant = ot.suggest_categorical("quantization", list(space.quantizations))
            key = (ratio, criterion, quant)
            trial = seen.get(key)
            if trial is None:  # random/TPE may repeat a point of a small discrete space
                trial = _run_trial(len(results), ratio, criterion, quant, Path(tmp))
                results.append(trial)
                seen[key] = trial
            bar.advance()
            return (trial.accuracy if trial.accuracy is not None else 0.0,
                    trial.latency_ms if trial.latency_ms else math.inf)

        def _run_trial(number, ratio, criterion, quant, tmp_dir: Path) -> Trial:
            trial = Trial(number=number, ratio=ratio, criterion=criterion, quantization=quant)
            started = time.perf_counter()
            try:
                model = loaded.model
                if ratio > 0:
                    pruned = prune_model(
                        model, ratio=ratio, criterion=criterion, round_to=profile.pruning.round_to,
                        min_channels=profile.pruning.min_channels, data=x_cal, seed=seed)
                    model = pruned.model
                    trial.macs = pruned.report.get("macs_after")
                    if train is not None:
                        from edgeprune.training.api import recover

                        model = recover(model, teacher=loaded.model, train=train,
                                        val=(x_val, y_val), epochs=finetune_epochs)
                quant_io = profile.quantization.io if quant == "int8" else "float"
                blob = convert(model, quant, representative=x_cal, io=quant_io,
                               int8_only=profile.operators.int8_only)
                path = tmp_dir / f"trial{number}.tflite"
                path.write_bytes(blob)
                trial.model_bytes = len(blob)
                trial.accuracy = float(evaluate_tflite(path, x_val, y_val)["accuracy"])
                trial.latency_ms = _latency_ms(path, profile.threads, latency_runs)
            except InputError as exc:  # e.g. a ratio the rounding cannot honour
                trial.error = str(exc)
            trial.seconds = round(time.perf_counter() - started, 2)
            _check_budgets(trial, profile, baseline_accuracy)
            return trial

        study.optimize(objective, n_trials=n_trials)

    feasible = sorted((t for t in results if t.feasible),
                      key=lambda t: (-(t.accuracy or 0.0), t.latency_ms or math.inf))
    return {
        "target": profile.name,
        "sampler": sampler,
        "baseline": {"accuracy": baseline_accuracy},
        "trials": [asdict(t) for t in results],
        "best": asdict(feasible[0]) if feasible else None,
        "pareto": [t.number for t in pareto_front(results)],
    }


def _labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return np.argmax(y, -1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(int)
