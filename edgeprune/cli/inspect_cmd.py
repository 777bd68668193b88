"""``edgeprune inspect MODEL.tflite|MODEL.keras|DIR``: what is inside, and where int8 loses accuracy."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli import cli, deprecated_aliases, get_output, json_option, model_code_options


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--quant-error", "quant_error", is_flag=True,
              help="Compare every intermediate tensor of the artifact with the float --reference model on "
                   "--calibration (default: off, describe the file).")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="With --quant-error: the float model (Keras file or float .tflite) the artifact was compiled from "
                   "(default: the pruned float model compile kept in the artifact directory, manifest "
                   "pruned_model).")
@click.option("--calibration", "calibration", default=None, metavar="SRC",
              help="With --quant-error: inputs (.npy/.npz, image folder, module:function), as in compile.")
@click.option("--num-samples", type=int, default=32, show_default=True,
              help="With --quant-error: calibration samples to run, a seeded random subset.")
@click.option("--target", "-t", "target", default=None, metavar="NAME|PATH",
              help="With --quant-error: run the artifact on this profile's ssh device through the bench runner "
                   "(default: this machine).")
@click.option("--host", "host", default=None, metavar="HOST",
              help="With --quant-error: run the artifact on this ssh host ('local': the runner in its own process; "
                   "default: in this process).")
@click.option("--remote-python", metavar="PATH", default=None, help="python3 on the device (default: profile or python3).")
@click.option("--top", type=int, default=15, show_default=True, help="Rows of the tables printed for people (--json has them all).")
@model_code_options
@json_option
@deprecated_aliases(("--data", "--calibration"))
@click.pass_context
def inspect_command(ctx: click.Context, path: Path, quant_error: bool, reference, calibration, num_samples: int, target,
                    host, remote_python, top: int, custom_objects, unsafe: bool, json_mode: bool) -> None:
    """Ops, tensors, dtypes, quantization, MACs, arena and XNNPACK coverage of a .tflite artifact;
    layers, MACs and pruning groups (and why some are locked) of a Keras model.

    With --quant-error --calibration X [--reference MODEL]: per-tensor error of the artifact, run by LiteRT
    (here, or on a device with --host/--target through the bench runner), against the float model
    (RMSE over scale, cosine, SQNR), worst first.
    """
    from edgeprune.base.errors import InputError

    out = get_output(ctx, json_mode)
    co = str(custom_objects) if custom_objects else None
    if quant_error:
        from edgeprune.quantize.quant_error import quant_error as measure

        if calibration is None:
            also = "" if reference is not None else \
                ", and --reference MODEL where the artifact directory keeps no pruned float model"
            raise InputError(f"--quant-error needs --calibration X, the inputs to compare on{also}")
        _check_tflite_inputs(path, reference)  # no --reference: the pruned model compile kept, else an error
        result = measure(path, reference, calibration, num_samples=num_samples, custom_objects=co, unsafe=unsafe,
                         output=out, target=target, host=host, remote_python=remote_python)
        out.emit_json(result)
        if not out.json_mode:
            _print_quant_error(out, result, top)
        return
    if reference is not None or calibration is not None or host is not None or target is not None:
        raise InputError("--reference, --calibration, --target and --host are used with --quant-error")
    from edgeprune.quantize.inspection import inspect

    with out.progress(f"Inspecting {path}"):
        result = inspect(path, custom_objects=co, unsafe=unsafe)
    out.emit_json(result)
    if out.json_mode:
        return
    if result["kind"] == "tflite":
        _print_tflite(out, result, top)
    else:
        _print_keras(out, result, top)


def _check_tflite_inputs(path: Path, reference: Path | None) -> None:
    """--quant-error runs the artifact and a .tflite reference in this process: check them first."""
    from edgeprune.device.artifact import resolve_artifact
    from edgeprune.device.tflite_check import check_untrusted_tflite
    from edgeprune.quantize.inspection import is_tflite

    art = resolve_artifact(path)
    check_untrusted_tflite(art, str(art))
    if reference is not None and reference.is_file() and (is_tflite(reference) or reference.suffix.lower() == ".tflite"):
        check_untrusted_tflite(reference, f"--reference {reference}")


def _print_tflite(out, r: dict, top: int) -> None:
    """Ops and activation tensors for people: short tensor names (inspection.display_name; fused
    ops' names run to 255 characters), the full ones in --json."""
    from edgeprune.quantize.inspection import display_name

    out.table(f"{r['file']}: {r['bytes']:,} bytes, {r['macs']:,} MACs, arena {r['arena']['bytes']:,} bytes "
              f"({r['arena']['method']})",
              ["op", "count", "constant bytes", "MACs", "XNNPACK"],
              [(op, n, r["size_by_op"].get(op, 0), r["macs_by_op"].get(op, 0),
                f"{n - r['xnnpack']['fallback_op_counts'].get(op, 0)}/{n}")
               for op, n in sorted(r["op_counts"].items(), key=lambda kv: -kv[1])])
    rows = [t for t in r["tensors"] if not t["constant"]][:top]
    out.table("Activation tensors", ["tensor", "shape", "dtype", "scale", "zero point"],
              [(display_name(t["name"], None), t["shape"], t["dtype"], (t["quantization"] or {}).get("scale"),
                (t["quantization"] or {}).get("zero_point")) for t in rows])
    if any(display_name(t["name"], None) != t["name"] for t in rows):
        out.info("Tensor names are shortened here; --json gives them in full.")
    x = r["xnnpack"]
    out.info(f"XNNPACK takes {x['delegated_count']} of {len(r['ops'])} ops ({x['partitions']} partitions); "
             f"builtin fallback: {', '.join(f'{k} x{v}' for k, v in x['fallback_op_counts'].items()) or 'none'}")
    if r.get("metadata"):
        m = r["metadata"]
        out.info(f"metadata: normalization {m.get('normalization')}, labels {len(m.get('labels') or [])}")


def _print_keras(out, r: dict, top: int) -> None:
    out.info(f"{r['file']} ({r['flavour']}): {r['params']:,} params, {r['macs']:,} MACs; "
             f"{r['prunable_groups']} prunable groups ({r['prunable_channels']} channels), {r['locked_groups']} locked")
    if r.get("model_class"):
        out.info(r["model_class"])
    out.table("Pruning groups", ["group", "channels", "layers", "prunable", "locked because"],
              [(g["name"], g["channels"], ", ".join(g["layers"][:6]), g["prunable"], g["locked"])
               for g in r["groups"][: max(top, 30)]])


def _print_quant_error(out, r: dict, top: int) -> None:
    """The ranking for people: short tensor names (inspection.display_name; --json has the full
    ones), the error as % of the tensor's float range, and the degenerate tensors apart."""
    from edgeprune.quantize.inspection import display_name

    ranked = [x for x in r["layers"] if x.get("rank") is not None]
    if r.get("reference_note"):
        out.info(r["reference_note"])
    out.table(f"Quantization error of {r['artifact']} on {r['device']} vs {r['reference']} "
              f"({r['samples']} samples), worst first by error / float range",
              ["rank", "tensor", "op", "error % of range", "SQNR dB", "local drop dB", "cosine"],
              [(x["rank"], display_name(x["tensor"], None), x["op"], 100 * x["rmse_over_range"], x["sqnr_db"],
                x.get("local_drop_db"), x["cosine"]) for x in ranked[:top]])
    degenerate = [x for x in r["layers"] if x.get("rank") is None]
    if degenerate:
        out.table(f"Degenerate tensors, not ranked ({len(degenerate)})", ["tensor", "op", "scale", "why"],
                  [(display_name(x["tensor"], None), x["op"], x["scale"], x["degenerate"]) for x in degenerate[:top]])
    if any(display_name(x["tensor"], None) != x["tensor"] for x in r["layers"]):
        out.info("Tensor names are shortened here; --json gives them in full.")
    if r.get("note"):
        out.warn(r["note"])
    elif r["unmatched"]:
        out.warn(f"{len(r['unmatched'])} tensor(s) had no float counterpart: "
                 f"{', '.join(display_name(n, None) for n in r['unmatched'][:5])}")
