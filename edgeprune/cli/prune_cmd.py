"""``edgeprune prune``: structurally prune a Keras model (whole filters/channels/neurons)."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import cli, get_output, json_option
from edgeprune.errors import InputError
from edgeprune.training.options import training_options

CRITERIA = ("l1", "l2", "bn", "taylor", "mean_activation", "apoz", "entropy", "random")
DATA_CRITERIA = ("taylor", "mean_activation", "apoz", "entropy")
LATENCY_OBJECTIVES = ("macs", "importance")


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
@click.option("--ratio", type=float, help="Fraction of channels removed from every prunable group (0-1).")
@click.option("--target-macs", type=float, help="Keep at most this fraction of the original MACs (0-1].")
@click.option("--target-latency", type=float,
              help="Keep at most this fraction of the latency predicted by a per-layer table measured "
                   "with the interpreter (0-1].")
@click.option("--latency-table", type=click.Path(dir_okay=False, path_type=Path),
              help="With --target-latency: JSON table to reuse and extend (created if missing).")
@click.option("--latency-objective", type=click.Choice(LATENCY_OBJECTIVES), default="macs", show_default=True,
              help="With --target-latency: keep the most MACs (macs) or the most channel importance "
                   "(importance) within the latency.")
@click.option("--threads", type=int, help="With --target-latency: interpreter threads (default: profile, else 1).")
@click.option("--latency-quantization", type=click.Choice(("float32", "int8")), default="float32",
              show_default=True, help="With --target-latency: the arithmetic the table is measured in.")
@click.option("--criterion", type=click.Choice(CRITERIA), default="l1", show_default=True,
              help="Channel importance criterion.")
@click.option("--protect", multiple=True, metavar="REGEX", help="Layers (name or regex) whose outputs stay intact.")
@click.option("--per-layer", multiple=True, metavar="NAME_OR_REGEX=R", help="Ratio for matching layers.")
@click.option("--global-ranking", is_flag=True, help="Rank channels across groups (max 90% of any group).")
@click.option("--max-ratio", type=float, default=0.9, show_default=True,
              help="With --global-ranking: never remove more than this fraction of one group.")
@click.option("--round-to", type=int, help="Round remaining channels down to a multiple of N (default: profile).")
@click.option("--min-channels", type=int, help="Never keep fewer channels than N (default: profile).")
@click.option("--target", "target", help="Device profile (name or YAML) for round_to/min_channels.")
@click.option("--data", help="Calibration data (.npy/.npz) for taylor/mean_activation/apoz/entropy.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--custom-objects", type=click.Path(path_type=Path), help="Python file defining custom layers.")
@click.option("--unsafe", is_flag=True, help="Load models that need code (Lambda layers, custom objects).")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output .keras/.h5 file.")
@training_options
@json_option
@click.pass_context
def prune_command(ctx, model, ratio, target_macs, target_latency, latency_table, latency_objective, threads,
                  latency_quantization, criterion, protect, per_layer, global_ranking, max_ratio, round_to,
                  min_channels, target, data, seed, custom_objects, unsafe, output, json_mode, training):
    """Remove whole filters, channels and neurons from MODEL and write a smaller model to -o.

    With --train-data the pruned model is fine-tuned (--distill: from the unpruned model;
    --iterative-steps N: prune and fine-tune in N steps). QAT and the accuracy gate measure a
    quantized .tflite, so they belong to `edgeprune compile`.
    """
    out = get_output(ctx, json_mode)
    if training.qat:
        raise InputError("--qat produces a model meant for int8 conversion: use `edgeprune compile --qat`")
    if training.max_accuracy_drop is not None:
        raise InputError("--max-accuracy-drop gates the converted .tflite: use `edgeprune compile`")
    if sum(x is not None for x in (ratio, target_macs, target_latency)) != 1:
        raise InputError("give exactly one of --ratio, --target-macs or --target-latency")
    if ratio is not None and not 0.0 <= ratio < 1.0:
        raise InputError(f"--ratio must be in [0, 1), got {ratio}")
    for flag, value in (("--target-macs", target_macs), ("--target-latency", target_latency)):
        if value is not None and not 0.0 < value <= 1.0:
            raise InputError(f"{flag} must be in (0, 1], got {value}")
    if latency_table is not None and target_latency is None:
        raise InputError("--latency-table is used with --target-latency only")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    if criterion in DATA_CRITERIA and not data:
        raise InputError(f"--criterion {criterion} needs calibration data: pass --data FILE")
    if output.suffix not in (".keras", ".h5"):
        raise InputError(f"-o {output}: expected a .keras or .h5 file name")
    if not model.exists():
        raise InputError(f"{model}: no such file or directory")
    per = _parse_per_layer(per_layer)
    if target:
        from edgeprune.profiles import load_profile

        profile = load_profile(target)
        round_to = profile.pruning.round_to if round_to is None else round_to
        min_channels = profile.pruning.min_channels if min_channels is None else min_channels
        threads = profile.threads if threads is None else threads
    round_to = 1 if round_to is None else round_to
    min_channels = 1 if min_channels is None else min_channels

    from edgeprune import model_io
    from edgeprune.pruning.api import prune_model

    objects = model_io.load_custom_objects(custom_objects) if custom_objects else None
    with out.progress(f"loading {model}"):
        loaded = model_io.load_model(model, custom_objects=objects, safe_mode=not unsafe)
    x = y = None
    if data:
        with out.progress(f"loading data {data}"):
            from edgeprune.datasets import load_arrays

            x, y = load_arrays(data, input_shape=tuple(loaded.model.input_shape), num_samples=256, seed=seed)
    prune_kwargs = dict(ratio=ratio, target_macs=target_macs, criterion=criterion, protect=tuple(protect),
                        per_layer=per or None, global_ranking=global_ranking, max_ratio=max_ratio,
                        round_to=round_to, min_channels=min_channels, data=x, labels=y, seed=seed)
    if target_latency is not None:
        prune_kwargs.update(target_latency=target_latency, latency_table=latency_table, threads=threads or 1,
                            latency_quantization=latency_quantization, latency_objective=latency_objective)
    if training.iterative_steps > 1 or training.wants_training:
        from edgeprune.pruning.api import PruneResult
        from edgeprune.training.api import run_training_stage

        iterative = training.iterative_steps > 1
        first = None
        if not iterative:
            with out.progress("analysing channel groups and pruning"):
                first = prune_model(loaded.model, **prune_kwargs)
        stage = run_training_stage(first.model if first else loaded.model, training, original=loaded.model,
                                   prune_kwargs=prune_kwargs if iterative else None, calibration=x, output=out)
        result = PruneResult(model=stage.model, report=stage.pruned_report if iterative else first.report)
        result.report["training"] = stage.report
    else:
        with out.progress("analysing channel groups and pruning") as bar:
            if target_latency is not None:
                prune_kwargs["progress"] = lambda done, total: bar.update(
                    f"measuring layer latency {done}/{total}" if done < total else "pruning")
            result = prune_model(loaded.model, **prune_kwargs)
    with out.progress(f"saving {output}"):
        model_io.save_model(result.model, output, flavour=loaded.flavour)
    report = result.report
    report.update({"input": str(model), "output": str(output), "flavour": loaded.flavour,
                   "round_to": round_to, "min_channels": min_channels, "target": target})
    out.emit_json(report)
    if not out.json_mode or not out.quiet:
        _render(out, report)
