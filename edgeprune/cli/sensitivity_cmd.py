"""``edgeprune sensitivity``: per-stage pruning curves measured on the artifact."""
from __future__ import annotations

import click

from edgeprune.cli import cli, get_output, json_option, model_code_options
from edgeprune.cli.search_cmd import _floats
from edgeprune.pruning.criteria import CRITERIA


@cli.command("sensitivity")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--target", "-t", default="x86-64", show_default=True, help="Device profile name or YAML path.")
@click.option("--val-data", required=True, help="Labelled validation data (.npz with x and y, or an image folder).")
@click.option("--calibration", help="Calibration data for int8 and data-driven criteria (default: the validation x).")
@click.option("--ratios", default="0.25,0.5,0.75", show_default=True,
              help="Comma-separated fractions (0-1) of the channels each stage is pruned at, alone.")
@click.option("--quantize", default=None, help="Quantization of the measured artifacts (default: the profile's).")
@click.option("--criterion", type=click.Choice(CRITERIA), default="l1", show_default=True,
              help="Channel importance criterion the stages are pruned by.")
@click.option("--target-macs", default="0.75,0.5", show_default=True,
              help="Comma-separated fractions (0-1] of the original MACs to compute the greedy per-stage "
                   "allocation for.")
@click.option("--plot", type=click.Path(dir_okay=False), default="sensitivity.png", show_default=True,
              help="PNG file to draw the curves in.")
@click.option("-o", "--output", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the curves and allocations as JSON (the prior for `search --sensitivity`; default: "
                   "not written).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for calibration sampling and pruning.")
@model_code_options
@json_option
@click.pass_context
def sensitivity_cmd(ctx, model, target, val_data, calibration, ratios, quantize, criterion, target_macs, plot,
                    json_path, seed, custom_objects, unsafe, json_mode):
    """Prune each stage of MODEL alone at several ratios and measure the artifact's accuracy.

    Stages are the prunable channel groups at one spatial resolution. The curves go to a PNG;
    the AIMET-style greedy allocation per --target-macs gives per-stage ratios (and the
    `prune --per-layer` entries) that keep the accuracy threshold highest.
    """
    from edgeprune.search.sensitivity import sensitivity

    out = get_output(ctx, json_mode)
    result = sensitivity(model, val_data=val_data, target=target, ratios=_floats(ratios), quantize=quantize,
                         criterion=criterion, calibration=calibration, target_macs=_floats(target_macs),
                         plot=plot, json_path=json_path, seed=seed, custom_objects=custom_objects,
                         unsafe=unsafe, output=out)
    out.emit_json(result)
    ratios_seen = [p["ratio"] for p in result["stages"][0]["points"]]
    def percent(fraction):  # results and JSON hold fractions; tables print percent
        return None if fraction is None else 100.0 * fraction

    out.table(f"Accuracy (%) of the artifact with one stage pruned ({result['target']}, {result['quantization']}); "
              f"unpruned {result['baseline']['accuracy']:.2%}",
              ["stage", "channels", *[f"r={r:g}" for r in ratios_seen]],
              [(c["name"], c["channels"], *[percent(p["accuracy"]) for p in c["points"]]) for c in result["stages"]])
    out.table("Greedy allocations (AIMET-style)", ["MAC target", "reached", "estimated MACs", "accuracy % >=",
                                                   "per stage"],
              [(a["target_macs"], "yes" if a["reached"] else "no", a["estimated_macs_fraction"],
                percent(a["accuracy_threshold"]), ", ".join(f"{k}={v:g}" for k, v in a["per_stage"].items()))
               for a in result["allocations"]])
    if result.get("plot"):
        out.info(f"plot: {result['plot']}")
