"""``edgeprune search``: pruning ratio x criterion x quantization under a device budget."""
from __future__ import annotations

import click

from edgeprune.cli import cli, get_output, json_option
from edgeprune.errors import VerificationError


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got '{value}'") from None


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


@cli.command("search")
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--target", "-t", default="x86-64", show_default=True, help="Device profile name or YAML path.")
@click.option("--val-data", required=True, help="Labelled validation data (.npz with x and y, or an image folder).")
@click.option("--calibration", help="Calibration data for int8 and data-driven criteria (default: the validation x).")
@click.option("--ratios", default="0,0.25,0.5,0.75", show_default=True, help="Channel ratios to try.")
@click.option("--criteria", default="l1", show_default=True, help="Importance criteria to try.")
@click.option("--quantize", "quantizations", default=None,
              help="Quantization modes to try (default: every mode the profile allows).")
@click.option("--sampler", type=click.Choice(["grid", "random", "bayes"]), default="grid", show_default=True)
@click.option("--trials", type=int, default=None, help="Number of trials (default: the whole grid).")
@click.option("--finetune-epochs", type=int, default=0, show_default=True, help="Fine-tune each pruned candidate.")
@click.option("--train-data", help="Training data for --finetune-epochs.")
@click.option("--latency-runs", type=int, default=20, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--custom-objects", type=click.Path(exists=True, dir_okay=False))
@click.option("--unsafe", is_flag=True, help="Allow Lambda layers / arbitrary code in the model file.")
@json_option
@click.pass_context
def search_cmd(ctx, model, target, val_data, calibration, ratios, criteria, quantizations, sampler,
               trials, finetune_epochs, train_data, latency_runs, seed, custom_objects, unsafe, json_mode):
    """Search pruning ratios, criteria and quantization for the most accurate model within budget.

    Every trial is pruned, converted and measured with the real interpreter; trials that break
    the profile's budgets (size, latency, accuracy drop) are reported but never chosen. Exit 1
    when no trial fits the budget.
    """
    from edgeprune.profiles import load_profile
    from edgeprune.search import SearchSpace, search

    out = get_output(ctx, json_mode)
    profile = load_profile(target)
    space = SearchSpace(
        ratios=_floats(ratios),
        criteria=_names(criteria),
        quantizations=_names(quantizations) if quantizations
        else tuple(q.value for q in profile.quantization.allowed),
    )
    result = search(
        model, target=target, val_data=val_data, calibration=calibration, space=space,
        sampler=sampler, trials=trials, finetune_epochs=finetune_epochs, train_data=train_data,
        latency_runs=latency_runs, seed=seed, safe_mode=not unsafe, custom_objects=custom_objects,
        output=out,
    )
    out.emit_json(result)
    pareto = set(result["pareto"])
    out.table(
        f"Search on {result['target']} ({result['sampler']}); baseline accuracy "
        f"{result['baseline']['accuracy']:.4f}",
        ["#", "ratio", "criterion", "quant", "accuracy", "latency ms", "bytes", "fits", "pareto", "note"],
        [
            (t["number"], t["ratio"], t["criterion"], t["quantization"], t["accuracy"],
             t["latency_ms"], t["model_bytes"], "yes" if t["feasible"] else "no",
             "*" if t["number"] in pareto else "", t["error"] or "; ".join(t["violations"]))
            for t in result["trials"]
        ],
    )
    best = result["best"]
    if best is None:
        raise VerificationError(f"no trial fits the budgets of '{result['target']}'")
    out.info(
        f"best: ratio {best['ratio']} criterion {best['criterion']} quantization "
        f"{best['quantization']} -> accuracy {best['accuracy']:.4f}, {best['latency_ms']:.3f} ms, "
        f"{best['model_bytes']} B"
    )
