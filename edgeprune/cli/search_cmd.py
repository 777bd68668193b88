"""``edgeprune search``: Optuna search over compile's pipeline under the profile's budgets."""
from __future__ import annotations

import click

from edgeprune.base.errors import BudgetError
from edgeprune.cli import cli, get_output, json_option, model_code_options
from edgeprune.pruning.criteria import CRITERIA


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got '{value}'") from None


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@cli.command("search")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--target", "-t", default="x86-64", show_default=True, help="Device profile name or YAML path.")
@click.option("--val-data", required=True, help="Labelled validation data (.npz with x and y, or an image folder).")
@click.option("--train-data", help="Labelled training data: every trial recovers on it (fine-tuning), and the "
              "final candidates get the full recovery. Without it trials are not fine-tuned.")
@click.option("--calibration", help="Calibration data for int8 and data-driven criteria (default: the validation x).")
@click.option("--space", "space_file", type=click.Path(dir_okay=False),
              help="YAML search space (ratios, per_stage, stage_ratios, criteria, round_to, quantizations, "
                   "finetune_epochs, distill); overrides the flags below.")
@click.option("--ratios", default="0,0.25,0.5,0.75", show_default=True,
              help="Comma list of global channel ratios to try: fractions (0-1) of each group's channels removed.")
@click.option("--per-stage", is_flag=True, help="One ratio per stage (groups at one spatial resolution) instead of one global ratio.")
@click.option("--criteria", default="taylor", show_default=True,
              help="Comma list of importance criteria to try (" + ", ".join(CRITERIA) + ").")
@click.option("--quantize", "quantizations", default=None,
              help="Comma list of quantization modes to try [every mode the profile allows but int16x8, "
                   "which runs on slow reference kernels on CPUs].")
@click.option("--finetune-epochs", default=None,
              help="Comma list of recovery epochs a trial may get [2,4 with --train-data, else 0].")
@click.option("--pruner", type=click.Choice(["auto", "none", "median", "halving", "hyperband"]), default="auto",
              show_default=True,
              help="Stop trials whose validation accuracy trails the others' after the same recovery epoch "
                   "(Optuna pruners; single objective only). auto: hyperband when trials recover 2+ epochs.")
@click.option("--final-epochs", type=int, default=None, metavar="N",
              help="Recovery epochs the best trials get after the search; --pick best ships the best of them "
                   "[10 with --train-data; 0 = off].")
@click.option("--final-top", type=int, default=3, show_default=True, metavar="K",
              help="How many of the most accurate feasible trials (of the Pareto front with several "
                   "objectives) get the full recovery.")
@click.option("--sampler", type=click.Choice(["grid", "random", "tpe", "bayes", "nsga2"]), default="tpe",
              show_default=True, help="Optuna sampler; bayes is an alias of tpe; nsga2 is multi-objective.")
@click.option("--objectives", default=None,
              help="Comma list from accuracy,latency,size (default: accuracy; nsga2: accuracy,latency,size).")
@click.option("--trials", type=int, default=None, help="Trials of the study in all (default: the grid, or 20).")
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite:///OUTPUT/study.db); "
              "postgresql://... for workers on several machines.")
@click.option("--study-name", default=None, help="Study name (default: MODEL-TARGET).")
@click.option("--worker", is_flag=True, help="Only run trials of the shared study (no final measurement/plot).")
@click.option("-o", "--output", "output_dir", default="edgeprune-search", show_default=True,
              help="Directory for the study database, trial artifacts, results.json and pareto.png.")
@click.option("--latency-table", type=click.Path(dir_okay=False),
              help="Predict latency from this table (measured on the target: `edgeprune latency-table`); "
                   "the final Pareto candidates are then measured on the device.")
@click.option("--host", "hosts", multiple=True, help="Measure on this SSH host instead of the profile's (repeatable).")
@click.option("--fleet", type=click.Path(dir_okay=False), help="Fleet YAML: measure on all its devices (slowest counts).")
@click.option("--latency-runs", type=int, default=20, show_default=True, metavar="N",
              help="Timed interpreter runs per latency measurement (the median counts).")
@click.option("--heartbeat", type=float, default=30, show_default=True,
              help="Seconds between worker heartbeats; a trial silent for twice this is marked failed.")
@click.option("--max-accuracy-drop", type=float, default=None, metavar="POINTS",
              help="Accuracy budget in percentage points of drop from the unpruned model (default: the profile's).")
@click.option("--sensitivity", "sensitivity_file", type=click.Path(exists=True, dir_okay=False),
              help="Sensitivity JSON (`edgeprune sensitivity`): its allocations are the first trials.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the sampler, of calibration sampling and of training.")
@model_code_options
@json_option
@click.pass_context
def search_cmd(ctx, model, target, val_data, train_data, calibration, space_file, ratios, per_stage, criteria,
               quantizations, finetune_epochs, sampler, objectives, trials, storage, study_name, worker,
               output_dir, latency_table, hosts, fleet, latency_runs, heartbeat, max_accuracy_drop,
               sensitivity_file, seed, custom_objects, unsafe, json_mode, pruner, final_epochs, final_top):
    """Search pruning ratios (global or per stage), criteria, rounding, quantization and recovery.

    Every trial runs compile's pipeline (prune, recover, convert, budgets, accuracy gate); its
    artifact's accuracy is measured with the interpreter and its latency on the profile's
    device (or predicted from --latency-table). Budgets are Optuna constraints: trials over a
    budget are reported, never picked. Several `--worker` processes may share one --storage
    study. Ship a trial with `edgeprune compile --from-study STORAGE --study-name NAME --pick best`.
    Exit 1 when no trial fits the budgets.
    """
    from edgeprune.search import SpaceConfig, load_space, search

    out = get_output(ctx, json_mode)
    if space_file:
        space = load_space(space_file)
    else:
        try:
            space = SpaceConfig(ratios=_floats(ratios), per_stage=per_stage, criteria=_names(criteria),
                                quantizations=_names(quantizations) if quantizations else None,
                                finetune_epochs=None if finetune_epochs is None else
                                [int(e) for e in _floats(finetune_epochs)])
        except Exception as exc:  # pydantic ValidationError
            raise click.BadParameter(str(exc).splitlines()[-1] if str(exc) else "invalid search space") from None
    result = search(model, target=target, val_data=val_data, train_data=train_data, calibration=calibration,
                    space=space, sampler=sampler, trials=trials, objectives=objectives, storage=storage,
                    study_name=study_name, output_dir=output_dir, worker=worker, latency_table=latency_table,
                    hosts=hosts, fleet=fleet, latency_runs=latency_runs, heartbeat=heartbeat, seed=seed,
                    max_accuracy_drop=max_accuracy_drop, sensitivity=sensitivity_file,
                    custom_objects=custom_objects, unsafe=unsafe, pruner=pruner, final_epochs=final_epochs,
                    final_top=final_top, output=out)
    out.emit_json(result)
    study = result["study"]
    if worker:
        out.info(f"worker {result['worker']}: ran trials {result['trials_run_here']} of study "
                 f"'{study['name']}' ({study['counts']})")
        return
    pareto = set(result["pareto"])
    # the params that vary (fixed ones are in --json and results.json)
    stage_cols = [k for k, v in result["space"]["distributions"].items() if k != "ratio" and len(v) > 1]
    out.table(
        f"Study '{study['name']}' on {result['target']} ({result['sampler']}); unpruned accuracy "
        f"{result['baseline']['accuracy']:.2%}",
        ["#", "state", "ratio", *stage_cols, "accuracy %", "final accuracy %", "latency ms", "bytes", "fits",
         "pareto", "note"],
        [
            (t["number"], t["state"].lower(), t["params"].get("ratio", "-"),
             *[t["params"].get(k) for k in stage_cols], _percent(t["accuracy"]), _final(t), _latency(t),
             t["model_bytes"],
             "yes" if t["feasible"] else "no", "*" if t["number"] in pareto else "", _note(t))
            for t in result["trials"]
        ],
    )
    out.info(f"plot: {result['plot']}; results: {result['results']}")
    best = result["best"]
    if best is None:
        raise BudgetError(f"no trial of study '{study['name']}' fits the budgets of '{result['target']}'")
    lat = f", {_latency(best)} ms" if best["latency_ms"] is not None else ""
    accuracy = f"accuracy {best['accuracy']:.2%}"
    if best.get("final"):
        accuracy += f" ({best['final']['accuracy']:.2%} after {best['final']['epochs']} recovery epochs)"
    out.info(f"best: trial {best['number']} {best['params']} -> {accuracy}{lat}, "
             f"{best['model_bytes']} B; ship it: edgeprune compile --from-study '{study['storage']}' "
             f"--study-name {study['name']} --pick best -o DIR")


def _latency(t) -> str | None:
    if t["latency_ms"] is None:
        return None
    text = f"{t['latency_ms']:.3f}"
    if t.get("latency_source") == "predicted":
        text += " (table)"
    measured = t.get("latency_measured")
    if measured:
        text += f" / {measured['latency_ms']:.3f} measured"
    return text


def _final(t):
    final = t.get("final")
    if not final:
        return None
    return _percent(final["accuracy"]) if final.get("accuracy") is not None else "failed"


def _percent(fraction):
    """An accuracy (a fraction in results and JSON) as the tables print it: percent."""
    return None if fraction is None else 100.0 * fraction


def _note(t) -> str:
    if t.get("stopped_early"):
        stop = t["stopped_early"]
        return f"stopped after recovery epoch {stop['epoch']} (val accuracy {stop['val_accuracy']:.2%})"
    if t.get("same_as") is not None:
        return f"same point as #{t['same_as']}"
    if t.get("error"):
        return t["error"]
    return "; ".join(t.get("violations") or [])
