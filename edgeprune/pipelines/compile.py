"""The compile pipeline: load → prune → recover → convert → check → gate → write.

Each stage appends ``{"name", "seconds", ...}`` to ``report["stages"]``. Adding an option is
one field on :class:`CompileOptions`; adding a stage is one ``_stage_*`` function called from
:func:`run_compile`. The artifact directory is written atomically; a candidate that breaks a
budget is kept as ``DIR.rejected`` and the compile fails (BudgetError, exit 1).
"""
from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune import __version__
from edgeprune.base.artifacts import (
    ArtifactDir,
    path_bytes,
    sha256_bytes,
    write_bytes_atomic,
    write_json,
)
from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import BudgetError, InputError, VerificationError

DEFAULT_TARGET = "x86-64"


@dataclass
class CompileOptions:
    """Everything ``edgeprune compile`` can be told; CLI flags map 1:1 onto these fields."""

    target: str = DEFAULT_TARGET
    quantize: str | None = None  # None: the profile's quantization.default
    io: str | None = None  # None: the profile's quantization.io (float unless int8)
    calibration: str | None = None
    num_samples: int | None = 200
    seed: int = 0
    custom_objects: str | dict | None = None
    unsafe: bool = False
    force: bool = False
    input_shape: Any = None  # --input-shape: fixes unknown input dimensions (edgeprune.load.shapes)
    # --input-range "LO,HI" or (lo, hi): the value range the model takes; None: read from a leading
    # Rescaling/Normalization layer, else the calibration data, else the profile (datasets.input_range)
    input_range: Any = None
    # pruning (edgeprune.pruning.api.prune_model); the same names as `edgeprune prune`
    ratio: float | None = None  # channel ratio
    target_macs: float | None = None  # target MACs as a fraction of the original
    target_latency: float | None = None  # target predicted latency as a fraction of the original
    latency_table: str | None = None  # JSON latency table to reuse/extend (see pruning.latency)
    criterion: str | None = None  # None: l1, or group_norm after a sparsity phase
    protect: tuple[str, ...] = ()
    per_layer: dict | None = None  # layer name/regex -> ratio, overriding ``ratio`` (search's per-stage ratios)
    round_to: int | None = None  # None: the profile's pruning.round_to
    min_channels: int | None = None  # None: the profile's pruning.min_channels
    study: dict | None = None  # provenance from ``compile --from-study`` (storage, study, trial)
    # training-aware compression (edgeprune.training): fine-tuning, distillation, iterative
    # pruning, gradual sparsity, QAT and the accuracy gate; None means defaults (no training).
    training: Any = None  # edgeprune.training.options.TrainingOptions
    # selective quantization chosen by measurement (edgeprune.quantize.selective): None or "auto"
    keep_float: str | None = None
    labels: str | None = None  # text file, one class label per line (TFLite metadata + labels.txt)
    # Python only: ``hook(epoch, logs)`` functions called after every recovery epoch; the search
    # reports intermediate accuracy to Optuna's pruner through them (training.finetune.FitSettings).
    recovery_hooks: tuple = ()

    @property
    def prunes(self) -> bool:
        return any(x is not None for x in (self.ratio, self.target_macs, self.target_latency))


@dataclass
class CompileResult:
    output_dir: Path
    tflite_path: Path
    manifest: dict
    report: dict

    def to_dict(self) -> dict:
        return {"output_dir": str(self.output_dir), "tflite": str(self.tflite_path),
                "manifest": self.manifest, "report": self.report}


class _Stages:
    """Times stages and records them in the report."""

    def __init__(self, report: dict, out: Output):
        self.report = report
        self.out = out

    @contextmanager
    def stage(self, name: str, description: str) -> Iterator[dict]:
        entry: dict[str, Any] = {"name": name}
        start = time.perf_counter()
        with self.out.progress(description):
            yield entry
        entry["seconds"] = round(time.perf_counter() - start, 4)
        self.report["stages"].append(entry)
        self.out.debug(f"{name}: {entry['seconds']:.2f}s")


def _versions() -> dict:
    from edgeprune.base.env import tf, tf_keras

    versions = {"edgeprune": __version__, "python": platform.python_version(),
                "tensorflow": tf().__version__, "tf_keras": tf_keras().__version__}
    for module in ("keras", "ai_edge_litert", "tflite_micro"):
        try:
            mod = __import__(module)
            versions[module] = getattr(mod, "__version__", None)
        except Exception:  # optional at runtime
            versions[module] = None
    return versions


def _resolve_modes(options: CompileOptions, profile) -> tuple[str, str]:
    qat = options.training is not None and options.training.qat
    if qat and options.quantize not in (None, "int8"):
        raise InputError(f"--qat produces an int8 model; it cannot be combined with --quantize {options.quantize}")
    quant = "int8" if qat else (options.quantize or profile.quantization.default.value)
    profile.check_quantization(quant)
    if options.io is not None:
        io = options.io
    else:
        io = profile.quantization.io if quant == "int8" else "float"
    from edgeprune.quantize.convert import check_options

    # After QAT the training data stands in for calibration data.
    has_representative = options.calibration or (qat and options.training.train_data)
    check_options(quant, io, np.zeros(1) if has_representative else None, profile.operators.int8_only)
    return quant, io


def _with_input_shape(loaded, options):
    """The model compile works on: ``--input-shape`` applied to a Keras graph; a bare SavedModel
    as it is, after refusing what needs a Keras graph (pruning, training)."""
    from edgeprune.load.model_io.savedmodel import is_bare, require_keras

    if is_bare(loaded.model):
        training = options.training
        if options.prunes:
            require_keras(loaded.model, "pruning", loaded.path)
        if training is not None and training.wants_training:
            require_keras(loaded.model, "training (fine-tuning, distillation, sparsity, QAT)", loaded.path)
        return loaded.model
    from edgeprune.load.shapes import with_input_shape

    return with_input_shape(loaded.model, options.input_shape)


def _dynamic_inputs(model, fixed) -> list[str]:
    """"input 'NAME' dimension I" for every input dimension left unknown in the artifact."""
    from edgeprune.quantize.convert import input_specs

    return [f"input '{s.name}' dimension {i}" for s in input_specs(model, fixed) for i in s.unknown]


def _float_input(model) -> bool:
    """Whether the (first) input takes real numbers: integer inputs (token ids) skip the range check."""
    dtype = getattr(model.inputs[0], "dtype", "float32")
    return str(getattr(dtype, "name", dtype)).startswith(("float", "bfloat", "half"))


def _prune_kwargs(options, profile, data) -> dict:
    kwargs = dict(
        ratio=options.ratio, target_macs=options.target_macs, criterion=options.criterion,
        protect=tuple(options.protect), per_layer=options.per_layer,
        round_to=options.round_to or profile.pruning.round_to,
        min_channels=options.min_channels or profile.pruning.min_channels,
        data=None if data is None else data[0], labels=None if data is None else data[1],
        seed=options.seed,
    )
    if options.target_latency is not None:
        qat = options.training is not None and options.training.qat
        quant = "int8" if qat else (options.quantize or profile.quantization.default.value)
        kwargs.update(target_latency=options.target_latency, latency_table=options.latency_table,
                      threads=profile.threads, latency_quantization="int8" if quant == "int8" else "float32")
    return kwargs


def _stage_prune(model, options, profile, data, stages) -> tuple[Any, dict | None]:
    """One-shot structured pruning (iterative pruning happens in the training stage)."""
    if not options.prunes:
        return model, None
    from edgeprune.pruning import api as pruning_api

    with stages.stage("prune", "Pruning channels") as entry:
        result = pruning_api.prune_model(model, **_prune_kwargs(options, profile, data))
        if result.latency_table is not None:  # per-layer time vs MACs for report.html
            from edgeprune.ship.hooks import layer_latency

            result.report["layer_latency"] = layer_latency(model, result.model, result.latency_table)
        entry.update({k: result.report.get(k) for k in ("macs_before", "macs_after", "params_before", "params_after")})
    return result.model, result.report


def _stage_training(model, original, options, profile, data, stages, out, in_range, gate: bool = True):
    """Fine-tuning / distillation / iterative pruning / gradual sparsity / QAT (edgeprune.training).

    Returns the training.api.StageResult, or None when no training was asked for.
    """
    from edgeprune.training.api import run_training_stage

    training = options.training
    iterative = training.prunes_in_training and options.prunes
    with stages.stage("training", "Training-aware compression") as entry:
        result = run_training_stage(
            original if iterative else model, training, original=original,
            prune_kwargs=_prune_kwargs(options, profile, data) if iterative else None,
            calibration=None if data is None else data[0],
            preprocessing=in_range, gate=gate, epoch_hooks=options.recovery_hooks, output=out)
        entry.update({k: v for k, v in result.report.items() if k in ("recovery", "data")})
    return result


PRUNED_MODEL = "pruned"  # DIR/pruned.keras (Keras 3) or DIR/pruned.h5 (tf_keras)


def _keep_pruned_model(model, directory: Path, training, out) -> dict:
    """Save the pruned (and recovered) float Keras model in the artifact directory, in its own
    flavour (edgeprune.load.model_io.save_model), and return its manifest entry.

    It is the float model the artifact was converted from: ``inspect --quant-error`` compares the
    artifact with it tensor by tensor (the unpruned model's tensors have other shapes), and it is
    what a user fine-tunes further. A QAT model holds fake-quantization wrappers, not float
    layers, so it is not kept; a model Keras cannot serialise is reported, not fatal.
    """
    if training.qat:
        return {"skipped": "--qat: the trained model holds fake-quantization wrappers, not a float model"}
    from edgeprune.base.env import is_keras3_model
    from edgeprune.load.model_io.save import save_model

    flavour = "keras3" if is_keras3_model(model) else "tf_keras"
    name = f"{PRUNED_MODEL}.keras" if flavour == "keras3" else f"{PRUNED_MODEL}.h5"
    try:
        path = save_model(model, directory / name)
    except (TypeError, ValueError, NotImplementedError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        out.warn(f"the pruned Keras model was not kept in the artifact ({reason})")
        return {"skipped": reason}
    raw = path.read_bytes()
    return {"file": name, "sha256": sha256_bytes(raw), "bytes": len(raw), "flavour": flavour}


def _gate_data(stage_result, data, training, max_drop, out):
    """(x, y, where from) for the accuracy gate: the training stage's gate split (data no
    selection saw: --gate-data, or --gate-split of the validation data), else labelled
    calibration data. A gate asked for on the command line without labelled data is an error;
    one that only comes from the profile's default is skipped with a warning."""
    if max_drop is None:
        return None
    if stage_result is not None and stage_result.gate is not None and stage_result.gate.y is not None:
        return stage_result.gate.x, stage_result.gate.y, stage_result.gate_source
    if data is not None and data[1] is not None:
        if training.distill and not training.train_data:
            out.warn("the accuracy gate measures on the calibration data that label-free distillation "
                     "trained on; pass --gate-data for an independent measurement")
        return data[0], data[1], "the labelled calibration data"
    if training.max_accuracy_drop is not None:
        raise InputError("--max-accuracy-drop needs labelled data: --gate-data, --val-data, --train-data "
                         "or a labelled --calibration")
    out.warn("the profile sets max_accuracy_drop but no labelled data was given: accuracy gate skipped")
    return None


def run_compile(model_path, output_dir, options: CompileOptions | None = None, *,
                output: Output | None = None) -> CompileResult:
    """Compile ``model_path`` into ``output_dir`` (model.tflite, manifest.json, report.json)."""
    from edgeprune.load.datasets import (
        array_sha256,
        count,
        input_range,
        load_arrays,
        parse_input_range,
        take,
    )
    from edgeprune.load.model_io import load_model
    from edgeprune.quantize.convert import convert, estimate_arena_bytes, io_details, op_counts
    from edgeprune.target.profiles import load_profile

    options = options or CompileOptions()
    out = output or default_output()
    profile = load_profile(options.target)
    quant, io = _resolve_modes(options, profile)
    parse_input_range(options.input_range)  # a bad --input-range fails before the model loads
    if sum(x is not None for x in (options.ratio, options.target_macs, options.target_latency)) > 1:
        raise InputError("give at most one of --ratio, --target-macs and --target-latency")
    if options.latency_table and options.target_latency is None:
        raise InputError("--latency-table is used with --target-latency only")
    if options.target_latency is not None and profile.connection.kind != "local" and not options.latency_table:
        raise InputError(f"--target-latency: profile '{profile.name}' is a remote device; measure its latency "
                         f"table there (`edgeprune latency-table MODEL -o TABLE.json --target {profile.name}`) "
                         f"and pass --latency-table TABLE.json")
    artifact = ArtifactDir(output_dir, force=options.force)  # refuses an existing DIR early, locks it
    try:
        report: dict[str, Any] = {"stages": []}
        stages = _Stages(report, out)

        with stages.stage("load", f"Loading {model_path}") as entry:
            loaded = load_model(model_path, custom_objects=options.custom_objects, safe_mode=not options.unsafe)
            model = _with_input_shape(loaded, options)
            entry.update({"flavour": loaded.flavour, "kind": loaded.kind})
            if loaded.translation:
                entry["translation"] = loaded.translation
        source_params = int(model.count_params())
        from edgeprune.load.datasets import signature
        from edgeprune.load.shapes import apply_input_shape, input_names

        output_names = signature(model)[1]
        names = input_names(model)
        inputs = list(zip(names, apply_input_shape([(n, tuple(t.shape)) for n, t in zip(names, model.inputs)],
                                                   options.input_shape)))

        data = None
        calibration_info = None
        in_range = input_range(profile, flag=options.input_range, model=model)
        if options.calibration:
            with stages.stage("calibration", "Reading calibration data") as entry:
                data = load_arrays(options.calibration, inputs=inputs, outputs=output_names,
                                   preprocessing=in_range, num_samples=options.num_samples,
                                   seed=options.seed, check_range=_float_input(model))
                if not in_range.checked:  # neither the flag nor the model said: the data does
                    in_range = input_range(profile, data=data[0])
                calibration_info = {"source": str(options.calibration), "sha256": array_sha256(data[0]),
                                    "count": count(data[0]), "seed": options.seed,
                                    "num_samples": options.num_samples, "labelled": data[1] is not None}
                entry["count"] = calibration_info["count"]

        original = model
        training = options.training
        if training is None:
            from edgeprune.training.options import TrainingOptions

            training = options.training = TrainingOptions()
        iterative = training.prunes_in_training and options.prunes  # the training stage prunes
        prune_report = None
        if not iterative:
            model, prune_report = _stage_prune(model, options, profile, data, stages)
        from edgeprune.target.budgets import Limits

        limits = Limits.of(profile, max_accuracy_drop=training.max_accuracy_drop, gate_mode=training.gate_mode)
        max_drop = limits.max_accuracy_drop
        stage_result = None
        if training.wants_training or training.val_data or training.gate_data or iterative:
            stage_result = _stage_training(model, original, options, profile, data, stages, out, in_range,
                                           gate=max_drop is not None)
            model = stage_result.model
            prune_report = stage_result.pruned_report or prune_report
            report["training"] = stage_result.report
        if prune_report is not None:
            report["pruning"] = prune_report

        representative = None if data is None else data[0]
        if representative is None and stage_result is not None and stage_result.validation is not None:
            representative = take(stage_result.validation.x, slice(0, options.num_samples or 200))
            if not in_range.checked:
                in_range = input_range(profile, data=representative, data_source="validation data")
        out.debug(f"input range [{in_range.scale[0]:g}, {in_range.scale[1]:g}] from {in_range.source}")
        report["input_range"] = in_range.to_json()
        gate = _gate_data(stage_result, data, training, max_drop, out)
        from edgeprune.ship import hooks as shipping

        shipping.check_options(options, quant, profile, max_drop if gate is not None else None)
        with stages.stage("convert", f"Converting to TFLite ({quant})") as entry:
            tflite = convert(model, quant, representative=representative, io=io,
                             int8_only=profile.operators.int8_only, input_shape=options.input_shape)
            entry["bytes"] = len(tflite)
            dynamic = _dynamic_inputs(model, options.input_shape)
            if dynamic:
                entry["dynamic_dims"] = dynamic
                out.warn(f"{dynamic[0]} is dynamic in the artifact (the interpreter allocates it as 1 until "
                         f"resized); pass --input-shape to fix it")
        if options.keep_float:
            with stages.stage("keep_float", "Keeping the worst int8 layers in float (measured)") as entry:
                tflite, report["keep_float"] = shipping.keep_float(model, original, tflite, representative, io, gate,
                                                                   max_drop, profile, out)
                entry["kept_float"] = report["keep_float"]["kept_float"]
        # the metadata's normalization describes the range decided above, not the profile's default
        scaled = profile.model_copy(update={"preprocessing": profile.preprocessing.model_copy(
            update={"scale": tuple(in_range.scale)})})
        tflite = shipping.with_metadata(tflite, model, scaled, options.labels)

        with stages.stage("check", "Checking the artifact") as entry:
            ios = io_details(tflite)
            ops = op_counts(tflite)
            from edgeprune.target import budgets as budget_checks

            runtime_error = None  # why the target's runtime cannot run the artifact (it is rejected)
            if profile.operators.runtime == "tflm":  # budgets before TFLM, then TFLM in a child
                from edgeprune.quantize import tflm

                mcu = tflm.check_for_target(tflite, limits)
                arena, budgets, runtime_error = mcu.arena, mcu.budgets, mcu.error
            else:
                arena = {"bytes": estimate_arena_bytes(tflite),
                         "method": "estimate: peak bytes of live non-constant tensors"}
                budgets = budget_checks.check(limits, model_bytes=len(tflite), arena_bytes=arena["bytes"])
            entry["ops"] = sum(ops.values())

        if gate is not None:
            from edgeprune.target.gate import check_accuracy_gate

            with stages.stage("gate", "Accuracy gate (interpreter vs original model)") as entry:
                try:
                    report["accuracy_gate"] = check_accuracy_gate(tflite, original, gate[0], gate[1], max_drop,
                                                                  mode=limits.gate_mode, output=training.gate_output,
                                                                  source=gate[2])
                except VerificationError as exc:
                    report["accuracy_gate"] = exc.result
                    gate_error = exc
                else:
                    gate_error = None
                entry.update(report["accuracy_gate"])
            if report["accuracy_gate"].get("note"):
                out.warn(report["accuracy_gate"]["note"])
        else:
            gate_error = None

        report["sizes"] = {"source_params": source_params, "source_bytes": path_bytes(loaded.path),
                           "tflite_bytes": len(tflite)}
        if prune_report is not None:
            report["sizes"]["pruned_params"] = int(model.count_params())
        report["arena"] = arena
        report["ops"] = ops
        report["budgets"] = budgets

        manifest = {
            "edgeprune": __version__,
            "versions": _versions(),
            "runtime": profile.operators.runtime,
            "source": {"path": str(loaded.path.resolve()), "sha256": loaded.sha256, "flavour": loaded.flavour,
                       "kind": loaded.kind, "keras_version": loaded.keras_version},
            "profile": profile.model_dump(mode="json"),
            "quantization": {"mode": quant, "io": io},
            "calibration": calibration_info,
            "input_range": in_range.to_json(),
            "artifact": {"file": "model.tflite", "sha256": sha256_bytes(tflite), "bytes": len(tflite)},
            "inputs": ios["inputs"],
            "outputs": ios["outputs"],
            "keras_outputs": list(output_names),  # the model's output names, in order (bench labels y_<name>)
            "options": {k: v for k, v in asdict(options).items() if k not in ("custom_objects", "recovery_hooks")},
            "study": options.study,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        extra_files = shipping.extra_files(tflite, manifest, representative, options.labels)

        dest = Path(output_dir)
        with artifact as tmp:
            write_bytes_atomic(tmp / "model.tflite", tflite)
            if prune_report is not None:
                manifest["pruned_model"] = _keep_pruned_model(model, tmp, training, out)
            write_json(tmp / "manifest.json", manifest)
            write_json(tmp / "report.json", report)
            shipping.write_extras(tmp, extra_files, out)
            if gate_error is not None:
                write_json(tmp / "GATE_FAILED.json", report["accuracy_gate"])
                kept = artifact.reject()
                raise VerificationError(f"{gate_error}; candidate kept in {kept}, nothing written to {dest}")
            failed = budget_checks.failures(budgets)
            if failed:
                kept = artifact.reject()
                detail = "; ".join(failed)
                raise BudgetError(f"target '{profile.name}': {detail}; candidate kept in {kept}, nothing written to {dest}")
            if runtime_error is not None:
                kept = artifact.reject()
                raise VerificationError(f"target '{profile.name}': {runtime_error}; candidate kept in {kept}, "
                                        f"nothing written to {dest}")
        out.debug(f"wrote {dest}")
        return CompileResult(dest, dest / "model.tflite", manifest, report)
    finally:
        artifact.close()  # a compile that failed before writing lets go of DIR's lock now


# Option names before every command used the same ones (kept as deprecated aliases).
_RENAMED = {"prune": "ratio", "prune_macs": "target_macs", "prune_latency": "target_latency"}


def compile(model_path, output_dir, *, target: str = DEFAULT_TARGET, output: Output | None = None,
            **options) -> CompileResult:
    """Python API: ``edgeprune.compile("m.keras", "out/", target="cortex-m7", quantize="int8", ...)``.

    Keyword arguments are :class:`CompileOptions` fields.
    """
    for old, new in _RENAMED.items():
        if old in options:
            import warnings

            warnings.warn(f"compile({old}=...) is deprecated: use {new}=...", DeprecationWarning, stacklevel=2)
            options.setdefault(new, options.pop(old))
    known = {f for f in CompileOptions.__dataclass_fields__}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"compile() got unknown option(s): {', '.join(unknown)}")
    return run_compile(model_path, output_dir, CompileOptions(target=target, **options), output=output)
