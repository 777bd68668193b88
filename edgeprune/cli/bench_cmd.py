"""``edgeprune bench``: benchmark and verify a .tflite artifact locally or on devices over SSH."""
from __future__ import annotations

import click

from edgeprune.base.errors import EdgepruneError
from edgeprune.cli import cli, deprecated_aliases, get_output, input_range_option, json_option


def _mb(kb):
    return None if kb is None else kb / 1024.0


def _render(out, result: dict) -> None:
    for dev in result["devices"]:
        d = dev["device"]
        title = (f"{dev['host']}: {d['hostname']}, {d['machine']}, {d['cpu']}, {d['cores']} cores, {d['os']}, "
                 f"{d['runtime']} {d['runtime_version']}, python {d['python']}; "
                 f"{dev['results'][0]['steady']['count'] if dev['results'] else 0} runs, times in ms")
        if dev.get("emulated"):
            title = "EMULATED " + title + " (emulated latency: not a device figure)"
        rows = []
        for r in dev["results"]:
            s = r["steady"]
            rows.append((r["threads"], _ms(r["load_ms"]), _ms(r["init_ms"]), _ms(r["first_inference_ms"]),
                         _ms(r["warmup"]["mean_ms"]), _ms(s["mean_ms"]), _ms(s["std_ms"]),
                         _ms(s["p50_ms"]), _ms(s["p90_ms"]), _ms(s["p99_ms"]), _ms(_mb(r["peak_rss_kb"]))))
        # compact (light borders): the 11-column latency table fits 80 columns where it can
        out.table(title, ["thr", "load", "init", "first", "warmup", "mean", "std", "p50", "p90", "p99", "RSS MB"],
                  rows, compact=True)
        _render_state(out, dev)
        _render_protocol(out, dev)
        _render_per_layer(out, dev)
    if result.get("eval"):
        ref = result.get("reference") or {}
        columns = {"device": [], "output": [], "acc %": [], "mse": [], "ref %": [], "drop pts": [],
                   "drop 95% CI": [], "top-1 agree %": [], "max abs err": [], "vs x86 max err": []}
        for dev in result["devices"]:
            ev = dev.get("eval") or {}
            host_ag = dev.get("agreement_with_host") or {}
            per = ev.get("per_output") or {None: dict(ev, agreement=dev.get("agreement"))}
            ref_per = ref.get("per_output") or {}
            for name, row in per.items():
                ag = row.get("agreement") or {}
                ci = row.get("drop_ci95")
                ref_acc = (ref_per.get(name) or {}).get("accuracy") if name else ref.get("accuracy")
                for key, value in zip(columns, (dev["host"], name, _pct(row.get("accuracy")), row.get("mse"),
                                                _pct(ref_acc), row.get("accuracy_drop_points"),
                                                None if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]",
                                                _pct(ag.get("top1_agreement")), ag.get("max_abs_error"),
                                                host_ag.get("max_abs_error"))):
                    columns[key].append(value)
        keep = [k for k, values in columns.items() if k == "device" or any(v is not None for v in values)]
        out.table(f"Verification on {result['eval']['samples']} samples ({result['eval']['path']})", keep,
                  list(zip(*(columns[k] for k in keep))), compact=True)
    gate = result.get("gate") or {}
    if gate.get("checked"):
        limits = ", ".join(f"{k} {v:g}" for k, v in (("max latency ms", gate["max_latency_ms"]),
                                                     ("max accuracy drop", gate["max_accuracy_drop"]))
                           if v is not None)
        verdict = "[green]PASS[/green]" if gate["passed"] else "[red]FAIL[/red]"
        mode = f", {gate['mode']} mode" if gate.get("max_accuracy_drop") is not None else ""
        out.info(f"gate ({limits}{mode}): {verdict}")
        for failure in gate["failures"]:
            out.info(f"  {failure}")
    manifest = result["artifact"].get("manifest")
    if manifest:
        def short(value):  # a manifest may hold the whole profile / quantization mapping
            return value.get("name") or value.get("mode") or value if isinstance(value, dict) else value

        facts = ", ".join(f"{k}={short(manifest[k])}" for k in ("profile", "target", "quantization") if k in manifest)
        checked = "sha256 matches the manifest" if manifest.get("sha256_checked") else "no sha256 in the manifest"
        out.info(f"manifest: {facts} ({checked})")


def _render_state(out, dev: dict) -> None:
    """One line of what skews latency (governor, clocks, temperature, throttling, load)."""
    before, after = dev.get("state_before") or {}, dev.get("state_after") or {}
    parts = []
    if before.get("governor"):
        parts.append(f"governor {before['governor']}")
    if before.get("cpu_mhz"):
        parts.append(f"{min(before['cpu_mhz'])}-{max(before['cpu_mhz'])} MHz")
    for label, state in (("before", before), ("after", after)):
        if state.get("temperature_c"):
            parts.append(f"{max(state['temperature_c'].values()):.1f} °C {label}")
    if before.get("throttled") or after.get("throttled"):
        parts.append(f"throttled {before.get('throttled')} -> {after.get('throttled')}")
    if before.get("load_average"):
        parts.append(f"load {before['load_average'][0]:.2f} -> {(after.get('load_average') or ['?'])[0]}")
    if parts:
        out.info(f"{dev['host']} state: " + ", ".join(parts))


def _render_protocol(out, dev: dict) -> None:
    for r in dev["results"]:
        proto = r.get("protocol")
        if not proto:
            continue
        p90s = ", ".join(_ms(x["p90_ms"]) for x in proto["repeats"])
        flag = " [red]SPREAD > 5 %[/red]" if proto["spread_flagged"] else ""
        label = " (emulated)" if dev.get("emulated") else ""
        out.info(f"{dev['host']} {proto['name']}{label}, {r['threads']} thread(s): p90 {_ms(proto['p90_ms'])} ms "
                 f"(median of {len(proto['repeats'])} repeats: {p90s}), spread {proto['spread_pct']:.1f} %{flag}")


def _render_per_layer(out, dev: dict) -> None:
    per = dev.get("per_layer")
    if not per:
        return
    rows = [(r["layer"], r["op"].replace("_2D", "").lower(), r["macs"], r["us"],
             None if r["share"] is None else f"{r['share'] * 100:.1f}",
             None if r["macs_per_us"] is None else f"{r['macs_per_us']:.0f}") for r in per["layers"]]
    label = "EMULATED " if per.get("emulated") else ""
    total = f"{per['total_us']:.1f}" if per.get("total_us") is not None else "?"
    out.table(f"{label}Per layer on {dev['host']} ({per['threads']} thread(s)); layers sum {per['sum_us']:.1f} us "
              f"of {total} us p50 (each op timed alone)", ["layer", "op", "MACs", "us", "% of total", "MACs/us"],
              rows, compact=True)


def _ms(value):
    """Compact fixed-point milliseconds (so the latency table fits 80 columns where it can)."""
    if value is None:
        return None
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _pct(value):
    return None if value is None else value * 100.0


@cli.command("bench")
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("--target", "-t", "target", metavar="NAME|PATH",
              help="Device profile: its ssh connection, threads and budgets (default: none, this machine).")
@click.option("--host", "hosts", multiple=True, metavar="HOST",
              help="ssh alias or user@host[:port] (repeatable; 'local' = this machine). Hosts run in parallel "
                   "(default: the profile's device, else this machine).")
@click.option("--fleet", type=click.Path(path_type=str),
              help="YAML list of hosts (host, python?, threads?) to run on in parallel (default: none).")
@click.option("--threads", "threads", metavar="1,2,4", help="Comma-separated interpreter thread counts to sweep (default: the --target profile's; "
              "without --target, those of the local profile the artifact was compiled for, said in one line; "
              "else 1).")
@click.option("--runs", type=int, default=50, show_default=True, help="Timed steady-state inferences, at least (see --min-duration).")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed warm-up inferences after the first one.")
@click.option("--min-duration", "min_duration", type=float, default=0.0, show_default=True,
              help="Keep running until at least this many seconds of steady state (0: just --runs).")
@click.option("--val-data", "val_data", type=click.Path(path_type=str),
              help="Labelled validation data (.npz with x and y): accuracy on the device (default: none, latency only).")
@click.option("--reference", "reference", type=click.Path(path_type=str),
              help="Source Keras model: its accuracy and output agreement, computed here (default: none).")
@click.option("--max-accuracy-drop", type=float, metavar="POINTS",
              help="Fail (exit 1) if reference accuracy minus artifact accuracy exceeds this many percentage "
                   "points (default: the profile's budget when --reference is given, else no gate).")
@click.option("--gate-mode", type=click.Choice(["point", "upper"]), default="point", show_default=True,
              help="Judge the measured accuracy drop (point) or the upper end of its 95% CI (upper).")
@click.option("--gate-output", metavar="NAME",
              help="Model with several outputs: the output the accuracy gate judges (default: the first "
                   "classification output).")
@click.option("--max-latency-ms", type=float, metavar="MS",
              help="Fail (exit 1) if the best p50 latency exceeds this many milliseconds (default: the profile's "
                   "budgets.max_latency_ms, else no limit).")
@click.option("--remote-python", metavar="PATH", help="python3 on the device (default: profile or python3).")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
              help="Extra ssh -o option (repeatable; also EDGEPRUNE_SSH_OPTIONS; default: none).")
@click.option("--ssh-config", type=click.Path(path_type=str),
              help="ssh config file to use (ssh -F; also EDGEPRUNE_SSH_CONFIG; default: ssh's own).")
@click.option("--connect-timeout", type=int, default=10, show_default=True, help="ssh ConnectTimeout, in seconds.")
@click.option("--per-layer", is_flag=True, help="Time each conv/dense layer on the device: its share of the total "
              "and MACs per microsecond (default: off).")
@click.option("--protocol", type=click.Choice(["mlperf"]), help="mlperf: MLPerf Mobile single-stream rules "
              "(>= 1024 queries and 60 s, p90, 5 repeats with pauses, spread flagged above 5 percent; "
              "default: none, --runs/--warmup).")
@input_range_option("the range the compile recorded in the artifact's manifest.json, else none checked")
@json_option
@deprecated_aliases(("--eval", "--val-data"))
@click.pass_context
def bench_command(ctx, artifact, target, hosts, fleet, threads, runs, warmup, min_duration, val_data, reference,
                  max_accuracy_drop, gate_mode, gate_output, max_latency_ms, remote_python, ssh_options, ssh_config,
                  connect_timeout, per_layer, protocol, input_range, json_mode):
    """Benchmark ARTIFACT (.tflite or an artifact directory) with the real LiteRT interpreter,
    on this machine or on devices over SSH, and optionally verify its accuracy.

    \b
    edgeprune bench model.tflite --threads 1,2,4
    edgeprune bench model.tflite --target rpi4 --val-data val.npz --reference model.keras --max-accuracy-drop 1
    edgeprune bench model.tflite --host pi@10.0.0.7 --host rpi5 --json
    edgeprune bench model.tflite --target rpi4-emulated --val-data val.npz --reference model.keras
    """
    out = get_output(ctx, json_mode)
    from edgeprune.device.api import bench
    from edgeprune.device.fleet import parse_threads

    try:
        result = bench(artifact, target=target, hosts=hosts, threads=parse_threads(threads, "--threads"), runs=runs,
                       warmup=warmup, min_duration_s=min_duration, eval_data=val_data, reference_model=reference,
                       max_accuracy_drop=max_accuracy_drop, remote_python=remote_python, output=out, fleet=fleet,
                       max_latency_ms=max_latency_ms, ssh_options=ssh_options, ssh_config=ssh_config,
                       connect_timeout=connect_timeout, per_layer=per_layer, protocol=protocol,
                       gate_mode=gate_mode, gate_output=gate_output, input_range=input_range)
    except EdgepruneError as exc:
        partial = getattr(exc, "result", None)
        if partial is not None:
            out.emit_json(partial)
            _render(out, partial)
        raise
    out.emit_json(result)
    _render(out, result)
