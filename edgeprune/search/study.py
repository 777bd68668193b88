"""Optuna studies: storage, samplers, constraints, and reading trials back.

A study lives in any storage Optuna supports. RDB URLs (SQLite by default, PostgreSQL for
several machines) get a heartbeat: a worker that dies mid-trial stops beating, the next
worker to start a trial marks it failed, and ``RetryFailedTrialCallback`` queues its
parameters again, so the study goes on. Budgets are Optuna constraints
(``constraints_func``): a value per budget, feasible when <= 0, never folded into the
objective as a penalty.
"""
from __future__ import annotations

import re
import time

from edgeprune.base.errors import BudgetError, InputError

SAMPLERS = ("grid", "random", "tpe", "bayes", "nsga2")  # bayes: the old name of tpe
PRUNERS = ("auto", "none", "median", "halving", "hyperband")
ATTR_STOPPED = "stopped_early"  # trial user attr: the pruner stopped it (it counts as a trial)
FINAL_PREFIX = "final:"  # study user attr per trial: its result after the full recovery
OBJECTIVES = {"accuracy": "maximize", "latency": "minimize", "size": "minimize"}
ATTR_CONFIG = "edgeprune"  # study user attr holding the study's configuration


def redact(url: str) -> str:
    """A storage URL without its password (for manifests and messages)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", str(url))


def storage_for(url: str, heartbeat: float | None):
    """An Optuna storage for ``--storage URL``; RDB URLs get the heartbeat."""
    import optuna

    if "://" not in str(url):
        raise InputError(f"--storage {url}: expected a URL such as sqlite:///study.db or "
                         "postgresql://user@host/db")
    scheme = str(url).split("://", 1)[0].split("+")[0]
    if scheme not in ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql"):
        raise InputError(f"--storage {redact(url)}: unsupported scheme '{scheme}' "
                         "(sqlite, postgresql, mysql)")
    kwargs = {}
    if heartbeat:
        kwargs = dict(heartbeat_interval=int(max(1, heartbeat)), grace_period=int(max(2, 2 * heartbeat)),
                      failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1))
    engine = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(str(url), engine_kwargs=engine, **kwargs)
        except (ModuleNotFoundError, ImportError) as exc:
            raise InputError(f"--storage {redact(url)}: the database driver is not installed ({exc}; "
                             "PostgreSQL: pip install 'psycopg[binary]')") from None
        except Exception as exc:  # sqlalchemy OperationalError, bad URL, server down...
            # Workers starting together on an empty database race to create Optuna's schema;
            # the loser sees "already exists" and succeeds on a second try.
            if "already exists" in str(exc) and attempt < 4:
                time.sleep(0.5 + attempt)
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"--storage {redact(url)}: cannot open the study storage ({first})") from None


# "runtime": 1 when the target's runtime refused the artifact (TFLM would abort or failed), not a budget
CONSTRAINTS = ("max_model_bytes", "max_arena_bytes", "max_latency_ms", "max_accuracy_drop", "runtime")


def constraints_of(trial) -> list[float]:
    """The constraints_func Optuna's samplers call: the trial's recorded budget excesses, one
    per budget in a fixed order (Optuna needs the same length for every trial); a budget the
    profile does not set, or a trial did not measure, counts as met (0)."""
    recorded = trial.user_attrs.get("constraints") or {}
    return [float(recorded.get(name, 0.0)) for name in CONSTRAINTS]


def _grid_sampler(distributions: dict, seed: int):
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """GridSampler that also accepts re-queued trials (a failed point run again), which carry
        fixed params but no grid id; Optuna's own after_trial looks the id up unconditionally."""

        def after_trial(self, study, trial, state, values):
            try:
                super().after_trial(study, trial, state, values)
            except KeyError:
                if not self._get_unvisited_grid_ids(study):
                    study.stop()

    return Grid(distributions, seed=seed)


def requeue_interrupted(study) -> list[int]:
    """Queue again the points of trials that failed without an error of their own (Ctrl-C, a
    killed worker): a grid counts a failed point as visited and would never run it again.
    Trials that failed with an edgeprune error are not retried (they would fail again)."""
    import optuna

    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    live = [t.system_attrs.get("fixed_params", t.params) for t in trials if t.state in (S.COMPLETE, S.RUNNING, S.WAITING)]
    queued = []
    for t in trials:
        if t.state == S.FAIL and t.params and "error" not in t.user_attrs and dict(t.params) not in live:
            study.enqueue_trial(dict(t.params), user_attrs={"requeued_from": t.number})
            live.append(dict(t.params))
            queued.append(t.number)
    return queued


def make_sampler(name: str, distributions: dict, *, seed: int, trials: int):
    import optuna

    if name == "grid":
        return _grid_sampler(distributions, seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name in ("tpe", "bayes"):
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints_of,
                                          n_startup_trials=max(3, min(10, trials // 4)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints_of,
                                             population_size=max(4, min(20, trials // 4)))
    raise InputError(f"--sampler: unknown sampler '{name}' (choose from {', '.join(SAMPLERS)})")


def make_pruner(name, *, max_epochs: int, objectives: int):
    """Optuna's pruner for ``--pruner`` (None: no pruning).

    A trial reports its validation accuracy after every recovery epoch; the pruner stops the
    ones that trail the others at the same epoch, so the trial budget goes to good points.
    ``auto`` is Hyperband (successive halving over several brackets, robust to the choice of
    the first rung) when trials recover for 2 or more epochs and the study has one objective:
    Optuna cannot report intermediate values of a multi-objective trial.
    """
    import optuna

    if isinstance(name, optuna.pruners.BasePruner):  # from Python: any Optuna pruner
        return name
    if name not in PRUNERS:
        raise InputError(f"--pruner: unknown pruner '{name}' (choose from {', '.join(PRUNERS)})")
    if name == "none" or (name == "auto" and (max_epochs < 2 or objectives > 1)):
        return None
    if objectives > 1:
        raise InputError(f"--pruner {name}: Optuna stops trials early only in single-objective studies "
                         "(--objectives accuracy); use --pruner none with several objectives")
    if max_epochs < 1:
        raise InputError(f"--pruner {name}: trials do not recover (finetune_epochs 0), so there is no "
                         "intermediate accuracy to stop them on; give --train-data")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)


def stopped_early(trial) -> bool:
    """A trial the pruner stopped (not one skipped as a duplicate or over the trial count)."""
    return trial.state.name == "PRUNED" and ATTR_STOPPED in trial.user_attrs


def open_study(storage, name: str, *, sampler, directions: list[str], config: dict | None, pruner=None):
    """Create the study (recording ``config``) or join it; returns (study, created).

    Joining checks that the study was made for the same model, target, space and objectives:
    workers of one study must agree, or their trials would not be comparable.
    """
    import optuna

    pruner = pruner or optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, sampler=sampler, study_name=name, pruner=pruner,
                                    directions=directions, load_if_exists=False)
        if config is not None:
            study.set_user_attr(ATTR_CONFIG, config)
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        pass
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        raise InputError(f"--study-name {name}: no such study in the storage") from None
    stored = None
    for _ in range(100):  # the creator records its config right after creating the study
        stored = study.user_attrs.get(ATTR_CONFIG)
        if stored is not None or config is None:
            break
        time.sleep(0.1)
    if config is not None:
        if stored is None:
            raise InputError(f"--study-name {name}: the study exists but was not made by edgeprune search")
        for key, what in (("model_sha256", "model"), ("target", "--target"), ("space", "search space"),
                          ("objectives", "--objectives"), ("sampler", "--sampler"),
                          ("latency", "latency source")):
            if stored.get(key) != config.get(key):
                raise InputError(f"--study-name {name}: the study was created with another {what} "
                                 f"({_short(stored.get(key))} vs {_short(config.get(key))}); "
                                 "use another --study-name")
    return study, False


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def rows(study) -> list[dict]:
    """Every trial of the study as a flat dict (params, metrics, state), by number.

    ``final`` is the trial's result after the full recovery (``search --final-epochs``), when
    it was one of the final candidates: {epochs, accuracy, artifact, sha256, feasible, ...}."""
    out = []
    finals = {k[len(FINAL_PREFIX):]: v for k, v in study.user_attrs.items() if k.startswith(FINAL_PREFIX)}
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        out.append({
            "number": t.number, "state": t.state.name, "params": dict(t.params),
            # the common params flat as well (edgeprune report's search section reads these)
            **{k: t.params.get(k) for k in ("ratio", "criterion", "quantization")},
            "values": list(t.values) if t.values is not None else None,
            "accuracy": a.get("accuracy"), "latency_ms": a.get("latency_ms"),
            "latency_source": a.get("latency_source"), "model_bytes": a.get("model_bytes"),
            "arena_bytes": a.get("arena_bytes"), "macs": a.get("macs"), "sha256": a.get("sha256"),
            "device": a.get("device"), "worker": a.get("worker"), "artifact": a.get("artifact"),
            "feasible": t.state.name == "COMPLETE" and all(v <= 0 for v in constraints_of(t)),
            "violations": a.get("violations", []), "same_as": a.get("same_as"),
            "error": a.get("error"), "seconds": a.get("seconds"),
            "stopped_early": a.get(ATTR_STOPPED), "final": finals.get(str(t.number)),
        })
    return out


def _rank_key(r: dict):
    return (-(r["accuracy"] or 0.0), r["latency_ms"] if r["latency_ms"] is not None else float("inf"),
            r["model_bytes"] or 0)


def best(trial_rows: list[dict]) -> dict | None:
    """The most accurate feasible trial (ties: faster, then smaller).

    Once final candidates were recovered in full, the best is the most accurate of them after
    that recovery (and still within the budgets): that is the model ``--pick best`` ships."""
    finals = [r for r in trial_rows if r.get("final") and r["final"].get("feasible")]
    if finals:
        return min(finals, key=lambda r: (-(r["final"]["accuracy"] or 0.0), *_rank_key(r)[1:]))
    feasible = [r for r in trial_rows if r["feasible"] and r["same_as"] is None]
    return min(feasible, key=_rank_key) if feasible else None


def pareto(trial_rows: list[dict]) -> list[dict]:
    """Feasible trials no other feasible trial beats on accuracy, latency and size; fastest first."""
    pts = [r for r in trial_rows if r["feasible"] and r["same_as"] is None and r["accuracy"] is not None]

    def vec(r):
        lat = r["latency_ms"] if r["latency_ms"] is not None else 0.0
        return (-r["accuracy"], lat, r["model_bytes"] or 0)

    front = []
    for r in pts:
        v = vec(r)
        if not any(all(a <= b for a, b in zip(vec(o), v)) and vec(o) != v for o in pts):
            if not any(vec(f) == v for f in front):
                front.append(r)
    return sorted(front, key=lambda r: (r["latency_ms"] or 0.0, -r["accuracy"]))


def pick(trial_rows: list[dict], how: str, study_name: str) -> dict:
    """``best``, ``pareto:K`` (K-th of the Pareto front, fastest first, from 1) or a trial number."""
    how = str(how).strip()
    if how == "best":
        chosen = best(trial_rows)
        if chosen is None:
            raise BudgetError(f"study '{study_name}': no completed trial fits the budgets")
        return chosen
    if how.startswith("pareto:"):
        try:
            k = int(how.split(":", 1)[1])
        except ValueError:
            raise InputError(f"--pick {how}: expected pareto:K with K a number from 1") from None
        front = pareto(trial_rows)
        if not 1 <= k <= len(front):
            raise InputError(f"--pick {how}: the Pareto front of study '{study_name}' has {len(front)} trial(s)")
        return front[k - 1]
    try:
        number = int(how)
    except ValueError:
        raise InputError(f"--pick {how}: expected best, pareto:K or a trial number") from None
    for r in trial_rows:
        if r["number"] == number:
            if r["state"] != "COMPLETE":
                raise InputError(f"--pick {how}: trial {number} of study '{study_name}' is {r['state']}, not COMPLETE")
            return r
    raise InputError(f"--pick {how}: study '{study_name}' has no trial {number}")
