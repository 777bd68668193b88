"""``edgeprune latency-table``: time every layer shape of a model on a device (NetAdapt LUT)."""
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


@cli.command("latency-table")
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="JSON table to write (an existing table from this device is extended).")
@click.option("--target", "-t", "target", help="Device profile: threads, channel rounding, and where to time "
              "(its ssh or emulated connection; a local profile times on this machine) (default: none, this machine).")
@click.option("--host", "host", metavar="HOST", help="Time on this ssh device (alias or user@host[:port]); "
              "it needs only numpy and a TFLite runtime, no TensorFlow.")
@click.option("--remote-python", metavar="PATH", help="python3 on the device (default: profile or python3); "
              "without --host/--target: another Python on this machine.")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
              help="Extra ssh -o option (repeatable; also EDGEPRUNE_SSH_OPTIONS; default: none).")
@click.option("--ssh-config", type=click.Path(path_type=str),
              help="ssh config file to use (ssh -F; also EDGEPRUNE_SSH_CONFIG; default: ssh's own).")
@click.option("--threads", type=int, help="Interpreter threads (default: the profile's, else 1).")
@click.option("--latency-quantization", type=click.Choice(("float32", "int8")), default="float32", show_default=True,
              help="Arithmetic the layers are timed in (the same option as in `edgeprune prune`).")
@input_shape_option
@click.option("--round-to", type=int, metavar="N",
              help="Channel step of the measured grid, in channels (default: the profile's, else 1).")
@click.option("--min-channels", type=int, metavar="N",
              help="Smallest width measured, in channels (default: the profile's, else 1).")
@model_code_options
@json_option
@deprecated_aliases(("--quantization", "--latency-quantization", click.Choice(("float32", "int8"))))
@click.pass_context
def latency_table_command(ctx, model, output, target, host, remote_python, ssh_options, ssh_config, threads,
                          latency_quantization, input_shape, round_to, min_channels, custom_objects, unsafe,
                          json_mode):
    """Measure how long each conv/dense layer of MODEL takes at several channel counts.

    The single-layer models are built here; with --host or a remote --target they are timed
    on that device over SSH (which needs no TensorFlow), else on this machine. Pass the file
    to `edgeprune prune --target-latency F --latency-table FILE` or `edgeprune compile
    --target-latency F --latency-table FILE`.
    """
    out = get_output(ctx, json_mode)
    if not model.exists():
        raise InputError(f"{model}: no such file or directory")
    if output.suffix != ".json":
        raise InputError(f"-o {output}: expected a .json file name")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    from edgeprune.device.profiles import load_profile

    profile = load_profile(target) if target else None
    if profile is not None:
        threads = profile.threads if threads is None else threads
        round_to = profile.pruning.round_to if round_to is None else round_to
        min_channels = profile.pruning.min_channels if min_channels is None else min_channels
    from edgeprune.load import model_io
    from edgeprune.pruning.device_timer import latency_table

    objects = model_io.load_custom_objects(custom_objects) if custom_objects else None
    remote = host is not None or (profile is not None and profile.connection.kind != "local")
    where = f" on {host or target}" if remote else ""
    with out.progress(f"measuring layer latency{where}") as bar:
        info = latency_table(model, output, target=target, host=host, remote_python=remote_python,
                             ssh_options=ssh_options, ssh_config=ssh_config, threads=threads or 1,
                             quantization=latency_quantization, round_to=round_to or 1,
                             min_channels=min_channels or 1, custom_objects=objects, safe_mode=not unsafe,
                             input_shape=tuple(input_shape) or None, output=out,
                             progress=lambda done, total: bar.update(f"measuring layer latency{where} {done}/{total}"))
    out.emit_json(info)
    if not out.json_mode:
        device = f"{info['device']}: {info['cpu']}, {info['machine']}, {info['runtime']}"
        if info.get("emulated"):
            device += " [EMULATED: latency means nothing here]"
        out.table(f"Layer latency of {model} on {device} ({info['threads']} thread(s), {info['quantization']})",
                  ["layer", "type", "in", "out", "us"],
                  [(r["name"], r["class_name"], r["cin"], r["cout"], f"{r['us']:.1f}") for r in info["layers"]])
        out.info(f"{len(info['layers'])} layers, {info['signatures']} shapes, {info['points_measured']} new points "
                 f"measured; summed layer latency {info['predicted_us'] / 1000:.3f} ms; wrote {output}")
        if info.get("op_profiler"):
            out.info(info["op_profiler"])
