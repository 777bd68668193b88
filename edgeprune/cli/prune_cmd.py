"""``edgeprune prune``: structurally prune a Keras model (whole filters/channels/neurons)."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.base.errors import InputError
from edgeprune.cli import (
    cli,
    deprecated_aliases,
    get_output,
    input_shape_option,
    json_option,
    model_code_options,
)
from edgeprune.pipelines.prune import CRITERIA, LATENCY_OBJECTIVES
from edgeprune.training.options import training_options

# A plain string checked by the pipeline (pruning.rules.attention.check_attention_unit), so that a
# bad value is one `edgeprune: error:` line like every other refusal; shared with `compile`.
attention_unit_option = click.option(
    "--attention-unit", metavar="dims|heads", default=None,
    help="What pruning removes inside a MultiHeadAttention: dims (the same query/key and value "
         "dimensions of every head; key_dim falls) or heads (whole heads; num_heads falls) [dims].")


def _parse_per_layer(items) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise InputError(f"--per-layer: expected NAME_OR_REGEX=RATIO, found '{item}'")
        try:
            out[name] = float(value)
        except ValueError:
            raise InputError(f"--per-layer {item}: ratio '{value}' is not a number") from None
    return out


def _render(out, report: dict) -> None:
    rows = []
    for layer in report["layers"]:
        changed = layer["channels_before"] != layer["channels_after"]
        rows.append((layer["name"], layer["class_name"],
                     f"{layer['channels_before']} -> {layer['channels_after']}" if changed else layer["channels_before"],
                     f"{layer['macs_before']:,}", f"{layer['macs_after']:,}",
                     f"{layer['params_before']:,}", f"{layer['params_after']:,}"))
    out.table("Pruned layers", ["layer", "type", "channels", "MACs before", "MACs after",
                                "params before", "params after"], rows)
    mb, ma = report["macs_before"], report["macs_after"]
    pb, pa = report["params_before"], report["params_after"]
    out.info(f"MACs {mb:,} -> {ma:,} ({ma / max(mb, 1):.1%}), params {pb:,} -> {pa:,} "
             f"({pa / max(pb, 1):.1%}); {report['pruned_groups']}/{report['groups']} channel groups pruned, "
             f"criterion {report['criterion']}, ratio {report['ratio_used']}")
    for reason in report.get("locked", [])[:20]:
        out.debug(f"locked: {reason}")
    if report.get("locked"):
        out.info(f"{len(report['locked'])} group(s) locked (use -v to list them)")
    for note in report.get("notes", []):
        out.warn(note)
    if report.get("output"):
        out.info(f"wrote {report['output']} ({report.get('flavour')})")


@cli.command("prune")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--ratio", type=float,
              help="Fraction (0-1) of the channels removed from every prunable group (no default: give exactly one of --ratio, --target-macs, --target-latency).")
@click.option("--target-macs", type=float,
              help="Keep at most this fraction (0-1] of the original MACs (no default: give exactly one of --ratio, --target-macs, --target-latency).")
@click.option("--target-latency", type=float,
              help="Keep at most this fraction of the latency predicted by a per-layer table measured "
                   "with the interpreter (no default: give exactly one of --ratio, --target-macs, --target-latency).")
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path),
              help="With --target-latency: JSON table to reuse and extend (created if missing; default: "
                   "measured here and not kept).")
@click.option("--latency-objective", type=click.Choice(LATENCY_OBJECTIVES), default="macs", show_default=True,
              help="With --target-latency: keep the most MACs (macs) or the most channel importance "
                   "(importance) within the latency.")
@click.option("--threads", type=int, help="With --target-latency: interpreter threads (default: profile, else 1).")
@click.option("--latency-quantization", type=click.Choice(("float32", "int8")), default="float32",
              show_default=True, help="With --target-latency: the arithmetic the table is measured in.")
@click.option("--criterion", type=click.Choice(CRITERIA), default=None,
              help="Channel importance criterion [taylor when there are inputs to score on (--calibration, else a sample of --train-data), l1 without; group_norm after --sparsity-epochs].")
@click.option("--protect", multiple=True, metavar="REGEX",
              help="Layers (name or regex) whose outputs stay intact (repeatable; default: none).")
@click.option("--per-layer", multiple=True, metavar="NAME_OR_REGEX=R",
              help="Remove fraction R (0-1) of the channels of the matching layers instead of --ratio's "
                   "(repeatable; default: none).")
@click.option("--sensitivity", "sensitivity", type=click.Path(dir_okay=False), default=None,
              help="A file from `edgeprune sensitivity --json`: with --target-macs F, per-stage ratios "
                   "come from the greedy allocation on its measured accuracy curves (AIMET-style).")
@attention_unit_option
@click.option("--global-ranking", is_flag=True,
              help="Rank channels across groups, at most --max-ratio of any one (default: off, each group alone).")
@click.option("--max-ratio", type=float, default=0.9, show_default=True,
              help="With --global-ranking: never remove more than this fraction (0-1) of one group.")
@click.option("--round-to", type=int, metavar="N",
              help="Round remaining channels down to a multiple of N (default: the profile's, else 1).")
@click.option("--min-channels", type=int, metavar="N",
              help="Never keep fewer channels than N (default: the profile's, else 1).")
@click.option("--target", "-t", "target",
              help="Device profile (name or YAML) for round_to/min_channels and latency (default: none).")
@click.option("--calibration", metavar="SRC",
              help="Calibration data (.npy/.npz, image folder, module:function) for taylor/mean_activation/"
                   "apoz/entropy (default: none; those criteria need it).")
@input_shape_option
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for calibration sampling and pruning.")
@model_code_options
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Pruned model file to write (.keras or .h5).")
@training_options
@json_option
@deprecated_aliases(("--data", "--calibration"))
@click.pass_context
def prune_command(ctx, model, ratio, target_macs, target_latency, latency_table, latency_objective, threads,
                  latency_quantization, criterion, protect, per_layer, sensitivity, attention_unit, global_ranking,
                  max_ratio,
                  round_to, min_channels, target, calibration, input_shape, seed, custom_objects, unsafe, output,
                  json_mode, training):
    """Remove whole filters, channels and neurons from MODEL and write a smaller model to -o.

    With --train-data the pruned model is fine-tuned (--distill: from the unpruned model;
    --iterative-steps N: prune and fine-tune in N steps). QAT and the accuracy gate measure a
    quantized .tflite, so they belong to `edgeprune compile`.
    """
    from edgeprune.pipelines.prune import prune

    out = get_output(ctx, json_mode)
    result = prune(model, output, ratio=ratio, target_macs=target_macs, target_latency=target_latency,
                   criterion=criterion, protect=tuple(protect), per_layer=_parse_per_layer(per_layer) or None,
                   global_ranking=global_ranking, max_ratio=max_ratio, round_to=round_to,
                   min_channels=min_channels, target=target, threads=threads, latency_table=latency_table,
                   latency_objective=latency_objective, latency_quantization=latency_quantization,
                   calibration=calibration, seed=seed, input_shape=tuple(input_shape) or None,
                   custom_objects=custom_objects, safe_mode=not unsafe, training=training,
                   sensitivity=sensitivity, attention_unit=attention_unit, output=out)
    out.emit_json(result.report)
    if not out.json_mode or not out.quiet:
        _render(out, result.report)
