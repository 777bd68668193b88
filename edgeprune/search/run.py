"""``edgeprune search``: drive compile's pipeline with Optuna under the profile's budgets.

Every process that runs a search is a worker of one Optuna study (``--storage``,
``--study-name``): the first one creates the study and records its configuration, the
others join it, and an interrupted search resumes where it stopped. A trial that repeats a
point another trial already finished reuses its result; one that repeats a point still
running elsewhere is skipped, so no point is computed twice.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import DeviceError, EdgepruneError, InputError
from edgeprune.search import study as st
from edgeprune.search.pipeline import Base, Latency, run_trial, worker_label
from edgeprune.search.space import Space, SpaceConfig, find_stages, load_space

DEFAULT_OUTPUT = "edgeprune-search"


def _objectives(spec, sampler: str, profile) -> list[str]:
    emulated = bool(getattr(profile, "emulated", False))
    if spec is None:
        if sampler == "nsga2":
            return ["accuracy", "size"] if emulated else ["accuracy", "latency", "size"]
        return ["accuracy"]
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [n for n in names if n not in st.OBJECTIVES]
    if bad or not names:
        raise InputError(f"--objectives: unknown objective(s) {', '.join(bad) or '(none)'} "
                         f"(choose from {', '.join(st.OBJECTIVES)})")
    if len(set(names)) != len(names):
        raise InputError("--objectives: an objective is listed twice")
    if "accuracy" != names[0]:
        raise InputError("--objectives: accuracy comes first (the other objectives are traded against it)")
    if "latency" in names and emulated:
        raise InputError(f"--objectives latency: target '{profile.name}' is emulated, its timings say nothing "
                         "about the real device; use --objectives accuracy,size")
    return names


def search(model_path, *, val_data: str, target: str = "x86-64", space=None, sampler: str = "tpe",
           trials: int | None = None, objectives=None, train_data: str | None = None,
           calibration: str | None = None, storage: str | None = None, study_name: str | None = None,
           output_dir=DEFAULT_OUTPUT, worker: bool = False, latency_table: str | None = None,
           hosts=(), fleet=None, latency_runs: int = 20, heartbeat: float | None = 30,
           seed: int = 0, max_accuracy_drop: float | None = None, sensitivity: str | None = None,
           custom_objects=None, unsafe: bool = False, protect=(), batch_size: int = 32,
           pruner: str = "auto", final_epochs: int | None = None, final_top: int = 3,
           output: Output | None = None) -> dict:
    """Search pruning, rounding, quantization and recovery settings; return the study's results.

    ``space``: a :class:`SpaceConfig`, a dict or a YAML path (None: defaults). Each trial is
    compiled by :func:`edgeprune.pipelines.compile.run_compile` into ``output_dir/trials/``; the study
    (default ``sqlite:///OUTPUT/study.db``) keeps params, metrics, the artifact sha256 and the
    device of every trial. With ``worker`` the process only runs trials (several may share a
    study, on several machines); otherwise it also measures the final Pareto candidates on
    the device when latency was predicted, and writes ``results.json`` and ``pareto.png``.

    Recovery is part of every trial when there is ``train_data`` (the space's finetune_epochs,
    default ``space.RECOVERY_EPOCHS``). ``pruner`` (auto, none, median, halving, hyperband)
    stops trials whose validation accuracy trails the others' after the same recovery epoch;
    stopped trials count towards ``trials``. ``final_epochs`` (default: the fine-tuning default,
    10; 0: off) is the full recovery the ``final_top`` most accurate feasible trials (with
    several objectives: of the Pareto front) then get; ``best`` and ``--pick best`` use it.
    """
    import optuna

    from edgeprune.device import metrics
    from edgeprune.device.profiles import load_profile
    from edgeprune.load.datasets import input_range, load_arrays
    from edgeprune.load.model_io import load_model

    out = output or default_output()
    if sampler not in st.SAMPLERS:
        raise InputError(f"--sampler: unknown sampler '{sampler}' (choose from {', '.join(st.SAMPLERS)})")
    if trials is not None and trials < 1:
        raise InputError("--trials must be at least 1")
    profile = load_profile(target)
    names = _objectives(objectives, sampler, profile)
    emulated = bool(getattr(profile, "emulated", False))
    if emulated and latency_table:
        raise InputError(f"--latency-table: target '{profile.name}' is emulated and has no latency")
    if latency_runs < 1:
        raise InputError("--latency-runs must be at least 1")
    if final_epochs is not None and final_epochs < 0:
        raise InputError("--final-epochs must be 0 (off) or more")
    if final_top < 1:
        raise InputError("--final-top must be at least 1")
    if isinstance(space, dict):
        from pydantic import ValidationError

        try:
            space = SpaceConfig.model_validate(space)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(f"search space: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    config = space if isinstance(space, SpaceConfig) else load_space(space) if space is not None else SpaceConfig()

    loaded = load_model(model_path, custom_objects=custom_objects, safe_mode=not unsafe)
    stages = find_stages(loaded.model, protect)
    sp = Space(config, profile, stages, trains=bool(train_data))
    if not train_data:
        out.warn("no --train-data: trials are not fine-tuned (BatchNorm statistics are re-estimated only), "
                 "so pruned trials score far below what they reach after recovery")
    input_shape = tuple(loaded.model.inputs[0].shape)
    x_val, y_val = load_arrays(val_data, input_shape=input_shape,  # the model's range, else none checked
                               preprocessing=input_range(profile, model=loaded.model))
    if y_val is None:
        raise InputError(f"--val-data {val_data}: the search needs labelled validation data (x and y)")
    baseline = metrics.metrics(loaded.model.predict(x_val, batch_size=256, verbose=0), y_val)["accuracy"]
    from edgeprune.pruning import macs as macs_mod

    baseline_macs = int(macs_mod.count(loaded.model)["macs"])

    latency = None
    if not emulated:
        latency = Latency(profile, str(target), table=latency_table, model=loaded.model, hosts=hosts,
                          fleet=fleet, runs=latency_runs)
    elif "latency" in names:  # unreachable: _objectives refused it
        raise InputError("latency objective on an emulated target")

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage_url = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    study_name = study_name or f"{Path(model_path).stem}-{profile.name}"
    n_wanted = min(trials, sp.size) if sampler == "grid" and trials else (trials or (sp.size if sampler == "grid" else 20))
    base = Base(model=str(Path(model_path).resolve()), target=str(target), val_data=str(val_data),
                train_data=train_data, calibration=calibration, seed=seed, custom_objects=custom_objects,
                unsafe=unsafe, protect=tuple(protect), max_accuracy_drop=max_accuracy_drop,
                batch_size=batch_size)
    study_config = {
        "base": base.to_dict(), "model_sha256": loaded.sha256, "target": profile.name,
        "space": sp.to_dict(), "objectives": names, "sampler": "tpe" if sampler == "bayes" else sampler,
        "trials": n_wanted,
        "latency": None if latency is None else {"source": latency.source, "table": latency_table},
        "baseline": {"accuracy": baseline, "macs": baseline_macs},
        "budgets": profile.budgets.model_dump(mode="json"),
    }

    optuna.logging.set_verbosity(optuna.logging.DEBUG if out.verbose else optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    rdb = st.storage_for(storage_url, heartbeat)
    directions = [st.OBJECTIVES[n] for n in names]
    trial_pruner = st.make_pruner(pruner, max_epochs=max(sp.finetune_epochs), objectives=len(names))
    study, created = st.open_study(rdb, study_name, directions=directions, config=study_config,
                                   sampler=st.make_sampler(sampler, sp.distributions(), seed=seed, trials=n_wanted),
                                   pruner=trial_pruner)
    stored = study.user_attrs.get(st.ATTR_CONFIG, study_config)
    n_wanted = int(stored["trials"])
    grid = stored["sampler"] == "grid"
    if not created and not grid:  # another worker created it: its own seed, so two random workers
        # differ (a grid keeps the creator's seed: it fixes the order of the grid's points)
        study.sampler = st.make_sampler(sampler, sp.distributions(), seed=seed + 1 + os.getpid() % 100_000,
                                        trials=n_wanted)
        out.info(f"joined study '{study_name}' ({_counts(study)})")
    if heartbeat:
        optuna.storages.fail_stale_trials(study)
    requeued = st.requeue_interrupted(study)
    if requeued:
        out.info(f"study '{study_name}': trial(s) {requeued} were interrupted; their points are queued again")
    if created and sensitivity:
        _enqueue_prior(study, sp, sensitivity, out)

    trials_dir = out_dir / "trials" / re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)
    mine: list[int] = []

    def objective(trial):
        trial.set_user_attr("worker", worker_label())
        if _budget_reached(study, trial.number, n_wanted, grid):
            trial.set_user_attr("skipped", "the study has its trials")
            study.stop()
            raise optuna.TrialPruned()
        choice = sp.suggest(trial)
        twin = _twin(study, trial.number, trial.params)
        if twin is not None and twin.state == optuna.trial.TrialState.COMPLETE and not grid:
            for key, value in twin.user_attrs.items():
                if key not in ("worker", "seconds", "same_as"):
                    trial.set_user_attr(key, value)
            trial.set_user_attr("same_as", twin.number)
            return tuple(twin.values)
        if twin is not None and st.stopped_early(twin):  # stopped before: it would be stopped again,
            # and counting it keeps a sampler that proposes it again from looping forever
            trial.set_user_attr(st.ATTR_STOPPED, {**twin.user_attrs[st.ATTR_STOPPED], "same_as": twin.number})
            raise optuna.TrialPruned()
        if twin is not None:  # the same point is running on another worker (or a grid point is done)
            trial.set_user_attr("duplicate_of", twin.number)
            raise optuna.TrialPruned()
        started = time.perf_counter()
        try:
            res = run_trial(base, choice, stages, trials_dir / f"{trial.number:05d}",
                            eval_data=(x_val, y_val), latency=latency, profile=profile,
                            baseline_macs=baseline_macs,
                            recovery_hooks=[_report_to(trial)] if trial_pruner is not None else [])
        except optuna.TrialPruned:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            mine.append(trial.number)
            bar.advance()
            raise
        except DeviceError:
            raise
        except EdgepruneError as exc:
            trial.set_user_attr("error", str(exc))
            mine.append(trial.number)
            return None  # a failed trial (recorded with its error); the search goes on
        for key, value in res.to_dict().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        mine.append(trial.number)
        bar.advance()
        return tuple(_value(n, res) for n in names)

    def stop_when_done(study_, _trial):
        if _budget_reached(study_, None, n_wanted, grid):
            study_.stop()

    done_before = _complete(study)
    with out.progress(f"search '{study_name}' ({sampler})", total=max(n_wanted - done_before, 0)) as bar:
        if done_before < n_wanted:
            study.optimize(objective, n_trials=None, callbacks=[stop_when_done], catch=(), gc_after_trial=True)

    trial_rows = st.rows(study)
    result = {
        "study": {"storage": st.redact(storage_url), "name": study_name, "created": created,
                  "counts": _counts(study)},
        "target": profile.name, "sampler": stored["sampler"], "objectives": stored["objectives"],
        "baseline": stored["baseline"], "space": stored["space"], "budgets": stored["budgets"],
        "worker": worker_label(), "trials_run_here": sorted(mine),
    }
    if worker:
        return result
    front = st.pareto(trial_rows)
    if latency is not None and latency.table is not None:
        _measure_front(study, front, profile, str(target), hosts, fleet, latency_runs, out)
        trial_rows = st.rows(study)
        front = st.pareto(trial_rows)
    if final_epochs is None:
        from edgeprune.training.options import TrainingOptions

        final_epochs = TrainingOptions().finetune_epochs if train_data else 0
    if final_epochs:
        candidates = final_candidates(trial_rows, front, top=final_top, objectives=len(names))
        _recover_in_full(study, candidates, final_epochs, base, stages, out_dir / "final", (x_val, y_val),
                         profile, baseline_macs, out)
        trial_rows = st.rows(study)
        front = st.pareto(trial_rows)
    best = st.best(trial_rows)
    measured = {k: v for k, v in study.user_attrs.items() if k.startswith("measured:")}
    for r in trial_rows:
        r["latency_measured"] = measured.get(f"measured:{r['number']}")
    result.update({"trials": trial_rows, "best": best, "pareto": [r["number"] for r in front]})
    from edgeprune.base.artifacts import write_json
    from edgeprune.ship.report.pareto import plot_pareto

    result["plot"] = str(plot_pareto(trial_rows, front, best, stored, out_dir / "pareto.png"))
    write_json(out_dir / "results.json", result)
    result["results"] = str(out_dir / "results.json")
    return result


def _report_to(trial):
    """An epoch hook that reports the recovery's validation accuracy to Optuna and stops the
    trial (``optuna.TrialPruned`` out of the training) when the pruner says it trails."""
    import optuna

    step = [0]

    def report(_epoch, logs):
        value = logs.get("val_accuracy")
        if value is None:  # no labelled validation split: nothing to compare trials on
            return
        step[0] += 1
        trial.report(float(value), step[0])
        if trial.should_prune():
            trial.set_user_attr(st.ATTR_STOPPED, {"epoch": step[0], "val_accuracy": float(value)})
            raise optuna.TrialPruned(f"validation accuracy {value:.4f} after recovery epoch {step[0]}")

    return report


def final_candidates(trial_rows: list[dict], front: list[dict], *, top: int, objectives: int) -> list[dict]:
    """The trials that get the full recovery: the ``top`` most accurate feasible ones; with
    several objectives, the most accurate ``top`` of the Pareto front (so every trade-off a
    user may pick from the front's head is recovered in full)."""
    pool = front if objectives > 1 else [r for r in trial_rows if r["feasible"] and r["same_as"] is None]
    pool = [r for r in pool if r["accuracy"] is not None]
    return sorted(pool, key=st._rank_key)[:top]


def _recover_in_full(study, candidates, epochs: int, base, stages, out_dir: Path, eval_data, profile,
                     baseline_macs, out) -> None:
    """Compile each candidate again with ``epochs`` of recovery; record it as ``final:<trial>``.

    The trial's pruning is deterministic (same criterion, seed and data), so the final model has
    the trial's architecture, and its latency is the trial's; only its accuracy changes."""
    from dataclasses import replace

    from edgeprune.search.space import decode

    todo = [r for r in candidates if f"{st.FINAL_PREFIX}{r['number']}" not in study.user_attrs]
    if not todo:
        return
    with out.progress(f"Full recovery ({epochs} epochs) of the best {len(todo)} trial(s)", total=len(todo)) as bar:
        for r in todo:
            choice = replace(decode(r["params"]), finetune_epochs=epochs)
            try:
                res = run_trial(base, choice, stages, out_dir / f"{r['number']:05d}", eval_data=eval_data,
                                latency=None, profile=profile, baseline_macs=baseline_macs)
            except EdgepruneError as exc:
                study.set_user_attr(f"{st.FINAL_PREFIX}{r['number']}", {"epochs": epochs, "error": str(exc),
                                                                        "feasible": False, "accuracy": None})
                out.warn(f"trial {r['number']}: the full recovery failed: {exc}")
                bar.advance()
                continue
            # the candidate met the latency budget as a trial, and its architecture is unchanged
            feasible = res.status == "ok" and all(v <= 0 for v in res.constraints.values())
            violations = list(res.violations)
            study.set_user_attr(f"{st.FINAL_PREFIX}{r['number']}", {
                "epochs": epochs, "accuracy": res.accuracy, "search_accuracy": r["accuracy"],
                "artifact": res.artifact, "sha256": res.sha256, "model_bytes": res.model_bytes,
                "feasible": feasible, "violations": violations})
            out.info(f"trial {r['number']}: accuracy {r['accuracy']:.4f} after {r['params'].get('finetune_epochs', 0)} "
                     f"recovery epoch(s), {res.accuracy:.4f} after {epochs}")
            bar.advance()


def _value(name: str, res) -> float:
    if name == "accuracy":
        return float(res.accuracy if res.accuracy is not None else 0.0)
    if name == "latency":
        return float(res.latency_ms)
    return float(res.model_bytes)


def _complete(study) -> int:
    """Trials done: completed, or stopped early by the pruner (a trial spent all the same)."""
    import optuna

    S = optuna.trial.TrialState
    return sum(1 for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED))
               if t.state == S.COMPLETE or st.stopped_early(t))


def _counts(study) -> dict:
    counts: dict = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def _budget_reached(study, number: int | None, wanted: int, grid: bool) -> bool:
    """Completed trials plus those running elsewhere >= wanted.

    A grid counts every other running trial (each holds its own grid point); the other
    samplers count the running trials that started first (lower number), so that of two
    workers asking at once for the last trial, exactly one runs it."""
    import optuna

    S = optuna.trial.TrialState
    n = 0
    for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.RUNNING, S.PRUNED)):
        if t.state == S.COMPLETE or st.stopped_early(t):
            n += 1
        elif t.state == S.RUNNING and number is not None and t.number != number and (grid or t.number < number):
            n += 1
    return n >= wanted


def _twin(study, number: int, params: dict):
    """A finished trial with the same params, or one running with a lower number; else None."""
    import optuna

    S = optuna.trial.TrialState
    running = None
    for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.RUNNING, S.PRUNED)):
        if t.number == number or t.params != params:
            continue
        if t.state == S.COMPLETE and t.user_attrs.get("same_as") is None:
            return t
        if st.stopped_early(t):  # the pruner already judged this point
            running = running or t
        if t.state == S.RUNNING and t.number < number:
            running = t
    return running


def _measure_front(study, front, profile, target, hosts, fleet, runs, out) -> None:
    """Measure the Pareto candidates' artifacts on the device: a table only predicts."""
    from edgeprune.base.artifacts import sha256_bytes

    meter = Latency(profile, target, hosts=hosts, fleet=fleet, runs=runs)
    with out.progress("Measuring the Pareto candidates on the device", total=len(front)) as bar:
        for r in front:
            key = f"measured:{r['number']}"
            path = Path(r["artifact"] or "")
            if key in study.user_attrs:
                pass
            elif path.is_file() and sha256_bytes(path.read_bytes()) == r["sha256"]:
                ms, device = meter.measure(path)
                study.set_user_attr(key, {"latency_ms": ms, "device": device,
                                          "over_budget": meter.budget is not None and ms > meter.budget})
                if meter.budget is not None and ms > meter.budget:
                    out.warn(f"trial {r['number']}: measured {ms:.3f} ms on {device} > budget "
                             f"{meter.budget:g} ms (the table predicted {r['latency_ms']:.3f} ms)")
            else:
                out.warn(f"trial {r['number']}: its artifact is on worker {r['worker']}, not measured here")
            bar.advance()


def _enqueue_prior(study, sp: Space, sensitivity_path: str, out) -> None:
    """Seed the study with the sensitivity allocations (AIMET-style greedy) as first trials."""
    from edgeprune.pruning.sensitivity_allocation import allocations_from_file

    if not sp.config.per_stage:
        out.warn("--sensitivity needs per_stage: true in the search space; prior not used")
        return
    dists = sp.distributions()
    for alloc in allocations_from_file(sensitivity_path, [s.name for s in sp.stages]):
        params = {}
        for name, values in dists.items():
            if name.startswith("stage:"):
                r = alloc.get(name[len("stage:"):], 0.0)
                params[name] = min(values, key=lambda v: abs(v - r))
            else:
                params[name] = values[0]
        study.enqueue_trial(params, skip_if_exists=True)

