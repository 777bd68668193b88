"""``edgeprune.bench``: benchmark and verify a .tflite artifact locally or on devices over SSH.

Also ``evaluate_tflite`` for an in-process accuracy check with the local interpreter.
"""
from __future__ import annotations

import platform
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import DeviceError, InputError, VerificationError
from edgeprune.device import runner, verify
from edgeprune.device.artifact import inspect_artifact
from edgeprune.device.fleet import (
    LOCAL,
    Device,
    device_for,
    load_fleet,
    parse_threads,
    run_parallel,
)
from edgeprune.device.jobs import EVAL_X, RunRequest
from edgeprune.device.local import run_local
from edgeprune.device.remote import SshSettings, parse_host, run_remote

# MLPerf Mobile single-stream: >= 1024 queries and >= 60 s per run, p90, 5 runs with a pause
MLPERF = {"name": "mlperf", "min_queries": 1024, "min_duration_s": 60.0, "repeats": 5, "pause_s": 10.0,
          "max_spread_pct": 5.0}
PROTOCOLS = {"mlperf": MLPERF}
EMULATED_NOTE = ("emulated (qemu-user on the host's CPU): shows that the artifact runs on this build, "
                 "not how fast a device runs it; never compared with devices nor gated")


def _with_result(error_cls, message: str, result: dict):
    exc = error_cls(message)
    exc.result = result
    return exc


def _resolve_devices(profile, hosts: Iterable[str], fleet, remote_python) -> list[Device]:
    devices: list[Device] = []
    if isinstance(hosts, str):
        hosts = [hosts]
    for spec in hosts:
        devices.append(device_for(spec, python=remote_python))
    if fleet is not None:
        devices += [d if d.python or not remote_python else Device(d.label, d.ssh, remote_python, d.threads)
                    for d in load_fleet(fleet)]
    if not devices and profile is not None and profile.connection.kind == "ssh":
        devices.append(device_for(profile.connection.host, python=remote_python or profile.connection.python))
    if not devices:
        devices.append(Device(LOCAL, None, remote_python))  # --remote-python: another local python
    labels = [d.label for d in devices]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise InputError(f"--host: listed twice: {', '.join(dup)}")
    return devices


def _device_entry(device: Device, raw: dict, data, ref_outputs, names, host_outputs=None,
                  keras_names=None) -> dict:
    entry = {"host": device.label, "transport": raw.pop("transport", None), **raw}
    if device.emulated:
        from edgeprune.device.emulated import label_device

        entry["emulated"] = True
        label_device(entry["device"])
        entry["latency_note"] = EMULATED_NOTE
        for row in entry.get("results", []):
            row["emulated"] = True
    ev = entry.get("eval")
    if ev is not None:
        outputs = ev.pop("outputs", None)
        if outputs is not None:
            outputs = verify.align(verify.as_dict(outputs, names), keras_names)
            scored = verify.score(outputs, verify.labels_dict(data.y, names), ref_outputs)
            first = scored[names[0]] if names and names[0] in scored else next(iter(scored.values()))
            ev.update({k: first.get(k) for k in ("accuracy", "mse", "accuracy_drop_points", "drop_ci95")})
            if "agreement" in first:
                entry["agreement"] = first["agreement"]
            if len(scored) > 1:
                ev["per_output"] = scored
            if host_outputs is not None and not device.is_local:
                # int8 kernels differ between builds (x86 AVX vs ARM NEON): by how much, here
                from edgeprune.device.metrics import agreement

                host = verify.as_dict(host_outputs, names)
                name = next(iter(outputs))
                same = agreement(outputs[name], host.get(name, next(iter(host.values()))))
                entry["agreement_with_host"] = {"host_machine": platform.machine(), **same,
                                                "identical": same["max_abs_error"] == 0.0}
            entry["_scored"] = scored
            entry["_outputs"] = outputs if len(outputs) > 1 else next(iter(outputs.values()))
    return entry


@dataclass
class EvalData:
    """Eval inputs (an array, or a dict per input) and labels (an array, or a dict per output)."""

    path: Path
    x: np.ndarray | dict
    y: np.ndarray | dict | None

    @property
    def samples(self) -> int:
        from edgeprune.load.datasets import count

        return count(self.x)


def load_eval_data(path, info, in_range=None) -> EvalData:
    """--val-data for the artifact's inputs, read by the one loader (edgeprune.load.datasets): image
    folders scaled onto ``in_range`` (an :class:`edgeprune.load.datasets.InputRange`), arrays refused
    outside it when it is a checked one (the flag's, or the one the compile recorded)."""
    from edgeprune.load.datasets import load_arrays

    inputs = [(t.get("key") or t["name"], [None, *t["shape"][1:]]) for t in info.inputs]
    outputs = [t.get("key") or t["name"] for t in info.outputs]
    # real-valued inputs (float, or quantized from float by the runner); token ids are not a range
    real = not info.inputs or str(info.inputs[0].get("dtype")) in ("float32", "float16", "int8", "uint8", "int16")
    x, y = load_arrays(str(path), inputs=inputs, outputs=outputs, preprocessing=in_range,
                       check_range=in_range is not None and real, flag="--val-data")
    return EvalData(Path(path), x, y)


def artifact_input_range(info, profile=None, flag=None):
    """The input range bench and verify feed the artifact: ``--input-range``, else the one its
    compile recorded in manifest.json, else the profile's default (edgeprune.load.datasets.input_range)."""
    from edgeprune.load.datasets import input_range

    return input_range(profile, flag=flag, recorded=(info.manifest or {}).get("input_range"))


def _warn_if_not_on_its_device(info, profile, hosts, fleet, threads, out) -> None:
    """An artifact compiled for a device benched here without saying so measures this machine,
    not the device: say it in one line (``--host local`` says it on purpose)."""
    compiled_for = (info.manifest or {}).get("profile")
    if profile is not None or hosts or fleet is not None or not isinstance(compiled_for, dict):
        return
    kind = (compiled_for.get("connection") or {}).get("kind", "local")
    if kind == "local":
        return
    name = compiled_for.get("name", "?")
    out.warn(f"{info.path} was compiled for '{name}' (reached over {kind}) but runs on this machine, "
             f"{', '.join(map(str, threads))} thread(s): pass --target {name} to measure it on the device, "
             "or --host local to measure it here")


def default_threads(info, profile, hosts, fleet) -> tuple[tuple[int, ...], str | None]:
    """The thread counts bench sweeps when ``--threads`` is not given, and the one line that says
    where they came from when the artifact's own manifest decided.

    ``--target``'s profile decides. Without one, the profile the artifact was compiled for
    (manifest.json ``profile``) decides when it describes this machine (connection ``local``,
    x86-64 and the like) and the bench runs here (no ``--fleet``, no ``--host`` but ``local``):
    an artifact compiled for 2 threads is measured on 2, not on 1 without a word. A profile
    reached over ssh describes another device: this machine runs 1 thread, and
    :func:`_warn_if_not_on_its_device` says so.
    """
    if profile is not None:
        return (profile.threads,), None
    compiled_for = (info.manifest or {}).get("profile")
    here = fleet is None and all(str(h) == LOCAL for h in ([hosts] if isinstance(hosts, str) else hosts))
    if not here or not isinstance(compiled_for, dict):
        return (1,), None
    if (compiled_for.get("connection") or {}).get("kind", "local") != "local" or "threads" not in compiled_for:
        return (1,), None
    threads = parse_threads(compiled_for["threads"], f"{info.manifest.get('path', 'manifest.json')}: profile threads")
    shown = ",".join(map(str, threads))
    return threads, (f"{shown} thread(s): the threads of '{compiled_for.get('name', '?')}', the profile "
                     f"{info.path.name} was compiled for (manifest.json); --threads sweeps others")


def bench(artifact, *, target=None, hosts=(), threads=None, runs=50, warmup=5,
          min_duration_s=0.0, eval_data=None, reference_model=None,
          max_accuracy_drop=None, remote_python=None, output: Output | None = None,
          fleet=None, max_latency_ms=None, ssh_options=(), ssh_config=None,
          connect_timeout: int = 10, retries: int = 2, keep_outputs: bool = False, per_layer: bool = False,
          protocol: str | None = None, protocol_settings: dict | None = None,
          gate_mode: str = "point", gate_output: str | None = None, input_range=None) -> dict:
    """Benchmark ``artifact`` on this machine or devices and verify it; return one result dict.

    threads: thread counts to sweep (default: :func:`default_threads`: the ``target`` profile's
    ``threads``, else those of the local profile the artifact was compiled for, else 1).
    eval_data: .npz with ``x`` and ``y`` -> accuracy (top-1) or MSE on each device.
    reference_model: the source Keras model -> its accuracy and output agreement.
    max_accuracy_drop (points) / max_latency_ms (default: profile budgets) make it a gate
    (edgeprune.device.budgets; gate_mode 'upper' judges the upper end of the drop's 95 % CI,
    gate_output names the output of a model with several): VerificationError (exit 1) when broken. Device failures raise DeviceError naming the
    host and the cause. Both errors carry the partial result as ``.result``.
    A profile reached by emulation (``rpi4-emulated``) gets an sshd started inside the emulated
    system for this call; its latency is labelled emulated and never gated. Remote devices' eval
    outputs are also compared with this machine's interpreter on the same artifact
    (``agreement_with_host``).
    per_layer: time each conv/dense op on the device (``per_layer`` of each device entry).
    protocol: "mlperf" repeats the steady state per MLPerf Mobile single-stream rules
    (``protocol_settings`` overrides its numbers for quick checks; the result says whether the
    run still meets the rules).
    input_range: ``"LO,HI"`` or ``(lo, hi)``, the range eval data must be in (default: the one the
    compile recorded in manifest.json; edgeprune.load.datasets.input_range).
    An artifact compiled for an ssh or emulated profile, benched with no ``target``, ``hosts`` or
    ``fleet``, runs here: a warning says so.
    """
    out = output or default_output()
    from edgeprune.device.profiles import load_profile

    profile = load_profile(target) if target is not None else None
    if runs < 1 or warmup < 0 or min_duration_s < 0:
        raise InputError("--runs must be >= 1, --warmup >= 0, --min-duration >= 0")
    from edgeprune.device.budgets import Limits

    limits = Limits.of(profile, max_latency_ms=max_latency_ms, max_accuracy_drop=max_accuracy_drop,
                       gate_mode=gate_mode)
    if reference_model is None and max_accuracy_drop is None:
        limits.max_accuracy_drop = None  # the profile's drop budget needs a reference to compare with
    threads_note = None
    if threads:
        threads = parse_threads(threads, "--threads")
    protocol_job = _protocol(protocol, protocol_settings)
    info = inspect_artifact(artifact)
    if not threads:
        threads, threads_note = default_threads(info, profile, hosts, fleet)
        if threads_note:
            out.info(threads_note)
    in_range = artifact_input_range(info, profile, input_range)
    _warn_if_not_on_its_device(info, profile, hosts, fleet, threads, out)
    emulated = profile is not None and profile.connection.kind == "emulated" and not hosts and fleet is None
    if emulated and ssh_config:
        raise InputError(f"--ssh-config: target {profile.name} is reached through its own throwaway ssh config")
    devices = [] if emulated else _resolve_devices(profile, hosts, fleet, remote_python)
    max_latency_ms, max_accuracy_drop = limits.max_latency_ms, limits.max_accuracy_drop
    if emulated:
        if max_latency_ms is not None and max_latency_ms != profile.budgets.max_latency_ms:
            out.warn(f"--max-latency-ms is not checked on {profile.name}: emulated latency is never a gate")
        max_latency_ms = limits.max_latency_ms = None  # emulated latency says nothing about the device
    if reference_model is not None and eval_data is None:
        raise InputError("--reference needs --eval data to compare on")
    if max_accuracy_drop is not None and reference_model is None:
        raise InputError("--max-accuracy-drop needs --reference MODEL and --eval DATA")
    settings = SshSettings.from_env(ssh_options, ssh_config, connect_timeout=connect_timeout, retries=retries) \
        if emulated or any(not d.is_local for d in devices) else None

    out_names = [t.get("key") or t["name"] for t in info.outputs]
    data = None
    if eval_data is not None:
        data = load_eval_data(eval_data, info, in_range)

    reference = ref_outputs = None
    if reference_model is not None:
        with out.progress(f"Running the reference model {Path(reference_model).name}"):
            from edgeprune.device.reference import reference_outputs

            ref_outputs = reference_outputs(reference_model, data.x, out_names)
        scored = verify.score(ref_outputs, verify.labels_dict(data.y, out_names))
        first = scored[out_names[0]] if out_names[0] in scored else next(iter(scored.values()))
        reference = {"path": str(reference_model), "accuracy": first["accuracy"], "mse": first["mse"]}
        if len(scored) > 1:
            reference["per_output"] = scored

    host_outputs = None
    if data is not None and (emulated or any(not d.is_local for d in devices)):
        host_outputs = evaluate_tflite(info.path, data.x, trusted=True)["outputs"]  # checked by inspect_artifact

    with ExitStack() as stack:
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeprune-bench-"))
        ex = None
        if data is not None:  # the device only runs the model: scoring happens here (edgeprune.device.metrics)
            if isinstance(data.x, dict):
                ex = Path(work) / (Path(EVAL_X).stem + ".npz")
                np.savez(ex, **data.x)
            else:
                ex = Path(work) / EVAL_X
                np.save(ex, data.x, allow_pickle=False)
        layers = []
        if per_layer:
            from edgeprune.device.layers import cut_layers

            layer_dir = Path(work) / "layers"
            layer_dir.mkdir()
            layers = cut_layers(info.path, layer_dir)
        extra = {"protocol": protocol_job} if protocol_job else {}
        request = RunRequest(artifact=info.path, sha256=info.sha256, threads=threads, runs=runs,
                             warmup=warmup, min_duration_s=min_duration_s, eval_x=ex, extra=extra,
                             models=tuple(layer.path for layer in layers if layer.path is not None))
        if emulated:
            from edgeprune.device.emulated import emulated_sshd

            with out.progress(f"Starting sshd inside the emulated {profile.connection.system}"):
                emu = stack.enter_context(emulated_sshd(profile.connection.system))
            settings = SshSettings.from_env(ssh_options, str(emu.config), connect_timeout=max(connect_timeout, 30),
                                            retries=retries)
            devices = [Device(profile.name, parse_host(emu.name), remote_python or emu.python, None, emulated=True)]

        def work_on(device: Device) -> dict:
            req = request.with_threads(device.threads)
            if device.is_local:
                return run_local(req, python=device.python, label=device.label)
            return run_remote(req, device.ssh, python=device.python or "python3", settings=settings,
                              log=out.warn)

        names = ", ".join(d.label for d in devices)
        with out.progress(f"Benchmarking {info.path.name} on {names}"):
            outcomes = run_parallel(devices, work_on)

    result = {
        "artifact": info.as_dict(),
        "profile": profile.name if profile else None,
        "settings": {"threads": list(threads), "runs": runs, "warmup": warmup, "min_duration_s": min_duration_s,
                     **({"threads_note": threads_note} if threads_note else {})},
        "eval": None if data is None else {"path": str(data.path), "samples": data.samples,
                                           "labels": data.y is not None, "input_range": in_range.to_json()},
        "reference": reference,
        "protocol": None if protocol_job is None else {**protocol_job, "compliant": _compliant(protocol_job)},
        "devices": [],
        "errors": [],
    }
    for device, raw, error in outcomes:
        if error is not None:
            result["errors"].append({"host": device.label, "error": error})
            continue
        entry = _device_entry(device, raw, data, ref_outputs, out_names, host_outputs,
                              (info.manifest or {}).get("keras_outputs"))
        if per_layer:
            from edgeprune.device.layers import per_layer_report

            rows = (entry.pop("timings", None) or {}).get("models", [])  # in the order of request.models
            timings = {path.name: row for path, row in zip(request.models, rows)}
            first = entry["results"][0] if entry.get("results") else None
            entry["per_layer"] = per_layer_report(layers, timings, first["steady"].get("p50_ms") if first else None,
                                                  first["threads"] if first else 1, device.emulated)
        if entry["artifact"]["sha256"] != info.sha256:
            result["errors"].append({"host": device.label, "error":
                                     f"{device.label}: the artifact's sha256 on the device "
                                     f"({entry['artifact']['sha256'][:16]}…) differs from the local file's"})
            continue
        outputs = entry.pop("_outputs", None)
        if keep_outputs and outputs is not None:
            entry["outputs"] = outputs
        result["devices"].append(entry)

    from edgeprune.device import budgets

    failures, notes = [], []
    for entry in result["devices"]:
        scored = entry.pop("_scored", None) or {}
        gated = verify.gated_output(scored, gate_output) if scored else None
        comparison = verify.drop_of(scored.get(gated)) if gated else None
        if comparison is not None:
            comparison["samples"] = data.samples
        best = None if entry.get("emulated") else verify.best_latency(entry)
        rows = budgets.check(limits, latency_ms=None if best is None else best[1], comparison=comparison)
        entry["budgets"] = rows
        failures += [f"{entry['host']}: {line}" for line in budgets.failures(rows)]
        notes += [f"{entry['host']}: {n}" for n in map(budgets.undecided_note, rows) if n]
    gated = max_latency_ms is not None or max_accuracy_drop is not None
    result["gate"] = {"max_latency_ms": max_latency_ms, "max_accuracy_drop": max_accuracy_drop,
                      "mode": limits.gate_mode, "output": gate_output, "checked": gated,
                      "passed": (not failures) if gated else None, "failures": failures, "notes": notes}
    if emulated or any(d.emulated for d in devices):
        result["gate"]["note"] = "emulated latency is never gated"
    for note in notes:
        out.warn(note)
    if result["errors"]:
        raise _with_result(DeviceError, "; ".join(e["error"] for e in result["errors"]), result)
    if failures:
        raise _with_result(VerificationError, "; ".join(failures), result)
    return result


def _protocol(name: str | None, overrides: dict | None) -> dict | None:
    if name is None:
        if overrides:
            raise InputError("protocol settings need --protocol")
        return None
    if name not in PROTOCOLS:
        raise InputError(f"--protocol: unknown protocol '{name}' (choose from {', '.join(PROTOCOLS)})")
    spec = dict(PROTOCOLS[name])
    unknown = set(overrides or {}) - set(spec)
    if unknown:
        raise InputError(f"protocol settings: unknown key(s) {', '.join(sorted(unknown))}")
    spec.update(overrides or {})
    if spec["min_queries"] < 1 or spec["repeats"] < 1 or spec["min_duration_s"] < 0 or spec["pause_s"] < 0:
        raise InputError("protocol settings: min_queries and repeats must be >= 1, durations >= 0")
    return spec


def _compliant(spec: dict) -> bool:
    """Whether a run with these settings still meets the protocol's published minimums."""
    rules = PROTOCOLS[spec["name"]]
    return all(spec[k] >= rules[k] for k in ("min_queries", "min_duration_s", "repeats"))


def evaluate_tflite(tflite_path_or_bytes, x, y=None, *, threads: int = 1, output_names=None,
                    trusted: bool = False) -> dict:
    """Run a .tflite model in-process on x; {'accuracy', 'mse', 'outputs'} (accuracy in 0..1).

    Float x is quantized with the input's scale/zero point for int8/uint8 models and outputs
    are dequantized, exactly as on a device. For several inputs ``x`` is a dict keyed by input
    name; for several outputs ``outputs`` is a dict keyed by output name, ``y`` may be too, and
    the result adds ``per_output`` (accuracy and mse of the first output stay at the top).
    ``output_names``: the Keras model's output names (a Keras 3 artifact calls them output_0,
    ...); read from the manifest beside a compiled artifact when not given.
    The model runs in this process, so it passes edgeprune.device.tflite_check first (once per
    content); ``trusted=True`` skips that for bytes edgeprune's own converter just wrote.
    """
    if isinstance(tflite_path_or_bytes, (bytes, bytearray, memoryview)):
        content, name, path = bytes(tflite_path_or_bytes), "<tflite bytes>", None
    else:
        path = Path(tflite_path_or_bytes)
        if not path.is_file():
            raise InputError(f"{path}: TFLite model not found")
        content, name = None, str(path)
    if not trusted:
        from edgeprune.device.tflite_check import check_untrusted_tflite

        check_untrusted_tflite(content if path is None else path, name)
    try:
        from edgeprune.base.env import quiet_native

        _, _, cls = runner.find_runtime()
        with quiet_native():  # the XNNPACK delegate banner
            interpreter = runner.load_interpreter(cls, str(path) if path else name, int(threads), content)
            runner.allocate(interpreter, name)
        outputs = runner.run_eval(interpreter, x if isinstance(x, dict) else np.asarray(x), np)
        names = [n for n, _ in runner.signature_io(interpreter)[1]]
    except runner.RunnerFailure as exc:
        raise InputError(f"{name}: {exc.message}") from None
    if output_names is None and path is not None and (path.parent / "manifest.json").is_file():
        import json

        try:
            output_names = json.loads((path.parent / "manifest.json").read_text()).get("keras_outputs")
        except (OSError, ValueError, AttributeError):
            output_names = None
    if output_names and isinstance(outputs, dict):
        outputs = verify.align(outputs, output_names)
        names = list(outputs)
    scored = verify.score(verify.as_dict(outputs, names), verify.labels_dict(y, names))
    first = scored[names[0]]
    result = {"accuracy": first["accuracy"], "mse": first["mse"], "outputs": outputs}
    if len(scored) > 1:
        result["per_output"] = scored
    return result
