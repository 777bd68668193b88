"""``edgeprune compile``: a Keras model in, a checked TFLite artifact directory out."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import (
    cli,
    deprecated_aliases,
    get_output,
    input_range_option,
    input_shape_option,
    json_option,
    model_code_options,
)
from edgeprune.cli.prune_cmd import attention_unit_option
from edgeprune.pruning.criteria import CRITERIA
from edgeprune.training.options import training_options


@cli.command("compile")
@click.argument("model", type=click.Path(path_type=Path), required=False)
@click.option("--target", "-t", default="x86-64", show_default=True,
              help="Device profile: a bundled name (see `edgeprune targets list`) or a YAML path.")
@click.option("--quantize", "quantize", default=None, metavar="MODE",
              help="float32 | dynamic | float16 | int8 | int16x8 (default: the profile's).")
@click.option("--io", "io", default=None, metavar="TYPE",
              help="Input/output type for int8: float | int8 | uint8 (default: the profile's).")
@click.option("--calibration", default=None, metavar="SRC",
              help="Representative data: .npy/.npz, an image folder, module:function / file.py:function, "
                   "or a recipe (bundled name like digits-sample, or recipe.yaml).")
@click.option("--num-samples", type=int, default=200, show_default=True,
              help="Calibration samples to use, a seeded random subset of --calibration.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for calibration sampling and pruning.")
@click.option("--ratio", type=float, default=None, metavar="R",
              help="Prune: remove this fraction (0-1) of the channels of every prunable group "
                   "(default: no pruning; give at most one of --ratio, --target-macs, --target-latency).")
@click.option("--target-macs", type=float, default=None, metavar="F",
              help="Prune until MACs are at most this fraction (0-1] of the original (default: no pruning).")
@click.option("--target-latency", type=float, default=None, metavar="F",
              help="Prune until the latency predicted by a per-layer table (measured with the "
                   "interpreter, the profile's threads) is this fraction (0-1] of the original (default: no pruning).")
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --target-latency: JSON latency table to reuse and extend (default: measured here; "
                   "required for remote profiles, see `edgeprune latency-table`).")
@input_shape_option
@input_range_option()
@click.option("--criterion", type=click.Choice(CRITERIA), default=None,
              help="Channel importance criterion [taylor when there are inputs to score on (--calibration, else a sample of --train-data), l1 without; group_norm after --sparsity-epochs].")
@click.option("--round-to", type=int, metavar="N", default=None,
              help="Keep each pruned layer's channels a multiple of N, the device's efficient tile "
                   "(default: the profile's pruning.round_to; x86-64: 16). 1 lets a small model prune further.")
@click.option("--min-channels", type=int, metavar="N", default=None,
              help="Never keep fewer channels than N in a pruned layer (default: the profile's pruning.min_channels).")
@click.option("--protect", multiple=True, metavar="REGEX",
              help="Never prune layers whose name matches REGEX (repeatable; default: none).")
@attention_unit_option
@model_code_options
@click.option("--keep-float", "keep_float", type=click.Choice(["auto"]), default=None,
              help="int8 only: when the accuracy gate fails, keep the layers whose measured error is worst "
                   "in float until it passes (needs --max-accuracy-drop and labelled data; default: off).")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text file with one class label per line: embedded in the TFLite metadata and shipped as "
                   "labels.txt (default: none).")
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), required=True,
              help="Artifact directory to create.")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--from-study", "from_study", default=None, metavar="STORAGE",
              help="Rebuild a trial of an `edgeprune search` study (Optuna storage URL); MODEL is then "
                   "optional (the study's) and every other setting comes from the trial.")
@click.option("--study-name", default=None, help="With --from-study: the study's name (required there).")
@click.option("--pick", default="best", show_default=True,
              help="With --from-study: best | pareto:K (K-th fastest of the front, from 1) | a trial number.")
@training_options
@json_option
@deprecated_aliases(("--prune", "--ratio", float), ("--prune-macs", "--target-macs", float),
                    ("--prune-latency", "--target-latency", float))
@click.pass_context
def compile_command(ctx: click.Context, model: Path, target: str, quantize, io, calibration, num_samples,
                    seed, ratio, target_macs, target_latency, latency_table, input_shape, input_range, criterion, round_to,
                    min_channels, protect, attention_unit, custom_objects, unsafe, keep_float, labels, output_dir, force, from_study, study_name, pick,
                    json_mode, training) -> None:
    """Prune (optional), quantize and lower MODEL to TFLite for a device profile.

    Writes DIR/model.tflite, DIR/manifest.json, DIR/report.json (with report.html and report.md
    rendered from it) and DIR/reference_sample.npz (for `edgeprune verify`) atomically. Exits 1 when the
    artifact breaks a budget of the profile (the candidate is kept as DIR.rejected) or an
    int8-only target still has float ops, or when the accuracy gate (--max-accuracy-drop, or the
    profile's) fails; 2 on bad input.

    Pruning uses the options of `edgeprune prune` (--ratio, --target-macs, --target-latency).
    Recovery after pruning: --train-data/--val-data with --finetune-epochs, --distill (label-free
    from --calibration images when no labels), --iterative-steps N; pruning during training with
    --gradual-sparsity or --sparsity-m-by-n 2:4 (tfmot); --qat for quantization-aware training.
    """
    from edgeprune.pipelines.compile import CompileOptions, run_compile

    out = get_output(ctx, json_mode)
    if from_study:
        given = [flag for flag, value in (("--quantize", quantize), ("--io", io), ("--calibration", calibration),
                                          ("--ratio", ratio), ("--target-macs", target_macs),
                                          ("--target-latency", target_latency), ("--protect", protect),
                                          ("--attention-unit", attention_unit),
                                          ("--input-range", input_range)) if value]
        if given:
            raise click.UsageError(f"--from-study takes every setting from the trial; drop {', '.join(given)}")
        from edgeprune.search.ship import compile_from_study

        result = compile_from_study(from_study, study_name, output_dir, pick=pick, model=model, force=force,
                                    output=out)
        _print(out, result, model or result.manifest["source"]["path"])
        return
    if model is None:
        raise click.UsageError("missing argument MODEL (or --from-study STORAGE --study-name NAME)")
    options = CompileOptions(
        target=target, quantize=quantize, io=io, calibration=calibration, num_samples=num_samples,
        seed=seed, custom_objects=str(custom_objects) if custom_objects else None, unsafe=unsafe,
        force=force, ratio=ratio, target_macs=target_macs, target_latency=target_latency,
        input_shape=tuple(input_shape) or None, input_range=input_range,
        latency_table=str(latency_table) if latency_table else None, criterion=criterion, protect=tuple(protect),
        attention_unit=attention_unit,
        round_to=round_to, min_channels=min_channels, training=training, keep_float=keep_float, labels=str(labels) if labels else None,
    )
    result = run_compile(model, output_dir, options, output=out)
    _print(out, result, model)


def _print(out, result, model) -> None:
    summary = summarize(result)
    out.emit_json(summary)
    if not out.json_mode:
        out.table(
            f"Compiled {model} for {summary['target']}",
            ["artifact", "quantization", "io", "bytes", "arena bytes", "budgets"],
            [(summary["tflite"], summary["quantization"], summary["io"], summary["tflite_bytes"],
              summary["arena_bytes"], summary["budgets"])],
        )
        pruning, gate = summary["pruning"], summary["accuracy_gate"]
        if pruning:
            out.info(f"pruning: MACs {pruning['macs_before']:,} -> {pruning['macs_after']:,} "
                     f"({pruning['macs_before'] / max(pruning['macs_after'], 1):.2f}x fewer), params "
                     f"{pruning['params_before']:,} -> {pruning['params_after']:,}; per-layer table in report.json")
        if summary.get("keep_float"):
            out.info(f"keep-float: {summary['keep_float']}")
        out.info(f"report: {result.output_dir / 'report.html'}")
        if gate:
            out.info(gate_line(gate))


def gate_line(gate: dict) -> str:
    """The accuracy gate in one line: accuracies, the drop with its 95% CI, the verdict."""
    lo, hi = gate["drop_ci95"]
    head = f"accuracy gate{' on output ' + gate['output'] if gate.get('output') else ''}"
    verdict = "" if gate.get("max_drop_points") is None else (
        f", limit {gate['max_drop_points']:g} pt ({gate.get('mode', 'point')}): "
        + ("pass" if gate["passed"] else "FAIL") + ("" if gate.get("decided", True) else ", undecided"))
    return (f"{head}: artifact {gate['candidate_accuracy']:.2%} vs original {gate['reference_accuracy']:.2%} "
            f"on {gate['samples']} held-out samples; drop {gate['drop_points']:.2f} pt, "
            f"95% CI [{lo:.2f}, {hi:.2f}]{verdict}")


def summarize(result) -> dict:
    """The compact result printed by the CLI (full details stay in manifest/report)."""
    m, r = result.manifest, result.report
    budgets = ", ".join(f"{b['budget']} ok" for b in r["budgets"]) or "none checked"
    return {
        "output_dir": str(result.output_dir),
        "tflite": str(result.tflite_path),
        "target": m["profile"]["name"],
        "quantization": m["quantization"]["mode"],
        "io": m["quantization"]["io"],
        "tflite_bytes": m["artifact"]["bytes"],
        "sha256": m["artifact"]["sha256"],
        "arena_bytes": r["arena"]["bytes"],
        "arena_method": r["arena"]["method"],
        "source_params": r["sizes"]["source_params"],
        "budgets": budgets,
        "budget_checks": r["budgets"],
        "stages": r["stages"],
        "pruning": {k: r["pruning"].get(k) for k in ("macs_before", "macs_after", "params_before", "params_after")}
        if "pruning" in r else None,
        "training": r.get("training"),
        "accuracy_gate": r.get("accuracy_gate"),
        "keep_float": (r.get("keep_float") or {}).get("summary"),
        "report_html": str(result.output_dir / "report.html"),
        "study": m.get("study"),
    }
