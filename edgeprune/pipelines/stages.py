"""The compile pipeline as named stages over one shared state.

Every stage is a function ``stage(state: State) -> None``: it reads what the stages before it
left on ``state`` and adds its own results. ``COMPILE`` is the ordered list that
:func:`edgeprune.pipelines.compile.run_compile` runs; ``run_stages`` runs any list of them.
Search trials and sensitivity run ``run_compile`` (they stand above this package); nothing here
calls back up. A stage that appears in ``report.json`` records ``{"name", "seconds", ...}`` in
``report["stages"]`` under the name it has always had:

=============  ===============  =========================================================
stage          report name      job
=============  ===============  =========================================================
load           load             the model file, ``--input-shape``, inputs and outputs
calibrate      calibration      ``--calibration`` data and the input range it decides
prune          prune            one-shot structured pruning (iterative: in ``train``)
train          training         fine-tuning, distillation, sparsity, QAT; gate data
convert        convert          ``.tflite`` bytes, ``keep_float``, TFLite metadata
check          check            ops, arena, budgets; TFLM on a microcontroller
gate           gate             accuracy of the ``.tflite`` against the original model
write          (none)           manifest, report and extras into the artifact directory
=============  ===============  =========================================================
"""
from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeprune import __version__
from edgeprune.base.artifacts import (
    ArtifactDir,
    path_bytes,
    sha256_bytes,
    write_bytes_atomic,
    write_json,
)
from edgeprune.base.console import Output
from edgeprune.base.errors import BudgetError, InputError, VerificationError


@dataclass
class State:
    """What the stages share: the inputs of a compile and what each stage adds."""

    model_path: Any
    output_dir: Any
    options: Any  # CompileOptions
    profile: Any  # target.profiles.Profile
    quant: str
    io: str
    out: Output
    artifact: ArtifactDir | None = None
    report: dict = field(default_factory=lambda: {"stages": []})
    timer: Any = None  # _Stages over ``report``
    # load
    loaded: Any = None
    model: Any = None
    source_params: int = 0
    output_names: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    # calibrate
    data: Any = None  # (x, y) or None
    calibration_info: dict | None = None
    in_range: Any = None
    # prune / train
    original: Any = None
    prune_data: Any = None  # (x, y) the criterion scores on: the calibration data, else a training sample
    training: Any = None  # TrainingOptions
    prune_report: dict | None = None
    stage_result: Any = None
    limits: Any = None
    max_drop: float | None = None
    representative: Any = None
    gate_data: tuple | None = None  # (x, y, where from)
    # convert / check / gate
    tflite: bytes = b""
    ios: dict | None = None
    ops: dict | None = None
    arena: dict | None = None
    budgets: list | None = None
    runtime_error: str | None = None
    gate_error: Exception | None = None
    # write
    manifest: dict | None = None


Stage = Callable[[State], None]


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
        protect=tuple(options.protect), per_layer=options.per_layer, attention_unit=options.attention_unit,
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


def _prune(model, options, profile, data, stages) -> tuple[Any, dict | None]:
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


def _training(model, original, options, profile, data, stages, out, in_range, gate: bool = True, prune_data=None):
    """Fine-tuning / distillation / iterative pruning / gradual sparsity / QAT (edgeprune.training).

    Returns the training.api.StageResult, or None when no training was asked for.
    """
    from edgeprune.training.api import run_training_stage

    training = options.training
    iterative = training.prunes_in_training and options.prunes
    with stages.stage("training", "Training-aware compression") as entry:
        result = run_training_stage(
            original if iterative else model, training, original=original,
            prune_kwargs=_prune_kwargs(options, profile, prune_data if prune_data is not None else data)
            if iterative else None,
            calibration=None if data is None else data[0],
            preprocessing=in_range, gate=gate, epoch_hooks=options.recovery_hooks, output=out)
        entry.update({k: v for k, v in result.report.items() if k in ("recovery", "data")})
    return result


PRUNED_MODEL = "pruned"  # DIR/pruned.keras (Keras 3) or DIR/pruned.h5 (tf_keras)


def _keep_pruned_model(model, directory: Path, training, out, origin_class: str | None = None) -> dict:
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
        path = save_model(model, directory / name, origin_class=origin_class)
    except (TypeError, ValueError, NotImplementedError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        out.warn(f"the pruned Keras model was not kept in the artifact ({reason})")
        return {"skipped": reason}
    raw = path.read_bytes()
    entry = {"file": name, "sha256": sha256_bytes(raw), "bytes": len(raw), "flavour": flavour}
    if origin_class:  # a keras.Model subclass (model_io.subclass): kept as a plain functional Model
        from edgeprune.load.model_io import saved_as_note

        entry["saved_as"] = saved_as_note(origin_class)
        out.warn(f"{name}: {entry['saved_as']}")
    return entry


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




def load(s: State) -> None:
    """The model file in its own flavour, ``--input-shape`` applied; its inputs and outputs."""
    from edgeprune.load.datasets import signature
    from edgeprune.load.model_io import load_model
    from edgeprune.load.shapes import apply_input_shape, input_names

    options = s.options
    with s.timer.stage("load", f"Loading {s.model_path}") as entry:
        s.loaded = load_model(s.model_path, custom_objects=options.custom_objects, safe_mode=not options.unsafe)
        s.model = _with_input_shape(s.loaded, options)
        entry.update({"flavour": s.loaded.flavour, "kind": s.loaded.kind})
        if s.loaded.translation:
            entry["translation"] = s.loaded.translation
    s.source_params = int(s.model.count_params())
    s.output_names = signature(s.model)[1]
    names = input_names(s.model)
    s.inputs = list(zip(names, apply_input_shape([(n, tuple(t.shape)) for n, t in zip(names, s.model.inputs)],
                                                 options.input_shape)))


def calibrate(s: State) -> None:
    """``--calibration`` data, and the input range (flag > model layer > this data > profile)."""
    from edgeprune.load.datasets import array_sha256, count, input_range, load_arrays

    options = s.options
    s.in_range = input_range(s.profile, flag=options.input_range, model=s.model)
    if options.calibration:
        with s.timer.stage("calibration", "Reading calibration data") as entry:
            s.data = load_arrays(options.calibration, inputs=s.inputs, outputs=s.output_names,
                                 preprocessing=s.in_range, num_samples=options.num_samples,
                                 seed=options.seed, check_range=_float_input(s.model))
            if not s.in_range.checked:  # neither the flag nor the model said: the data does
                s.in_range = input_range(s.profile, data=s.data[0])
            s.calibration_info = {"source": str(options.calibration), "sha256": array_sha256(s.data[0]),
                                  "count": count(s.data[0]), "seed": options.seed,
                                  "num_samples": options.num_samples, "labelled": s.data[1] is not None}
            entry["count"] = s.calibration_info["count"]


def prune(s: State) -> None:
    """One-shot structured pruning; iterative pruning is left to ``train``."""
    options = s.options
    s.original = s.model
    if options.training is None:
        from edgeprune.training.options import TrainingOptions

        options.training = TrainingOptions()
    s.training = options.training
    iterative = s.training.prunes_in_training and options.prunes  # the training stage prunes
    s.prune_data = s.data
    if (options.prunes and options.criterion is None and s.data is None and s.training.train_data
            and not s.training.sparsity_epochs):
        s.prune_data = _scoring_sample(s)
    if not iterative:
        s.model, s.prune_report = _prune(s.model, options, s.profile, s.prune_data, s.timer)


def _scoring_sample(s: State):
    """A sample of ``--train-data`` for the default criterion to score channels on, when there is
    no calibration data: with inputs, the default is Taylor (pruning.criteria.default_criterion)."""
    from edgeprune.load.datasets import load_arrays
    from edgeprune.pruning.criteria import SCORING_SAMPLES

    with s.out.progress("Reading a training sample to rank channels on"):
        return load_arrays(s.training.train_data, inputs=s.inputs, outputs=s.output_names,
                           preprocessing=s.in_range, num_samples=SCORING_SAMPLES, seed=s.options.seed,
                           check_range=_float_input(s.model), flag="train-data")


def train(s: State) -> None:
    """Training-aware compression when asked for; the data that represents and gates the model."""
    from edgeprune.device.budgets import Limits
    from edgeprune.load.datasets import input_range, take

    options, training, report = s.options, s.training, s.report
    iterative = training.prunes_in_training and options.prunes
    s.limits = Limits.of(s.profile, max_accuracy_drop=training.max_accuracy_drop, gate_mode=training.gate_mode)
    s.max_drop = s.limits.max_accuracy_drop
    if training.wants_training or training.val_data or training.gate_data or iterative:
        s.stage_result = _training(s.model, s.original, options, s.profile, s.data, s.timer, s.out, s.in_range,
                                   gate=s.max_drop is not None, prune_data=s.prune_data)
        s.model = s.stage_result.model
        s.prune_report = s.stage_result.pruned_report or s.prune_report
        report["training"] = s.stage_result.report
    if s.prune_report is not None:
        report["pruning"] = s.prune_report

    s.representative = None if s.data is None else s.data[0]
    if s.representative is None and s.stage_result is not None and s.stage_result.validation is not None:
        s.representative = take(s.stage_result.validation.x, slice(0, options.num_samples or 200))
        if not s.in_range.checked:
            s.in_range = input_range(s.profile, data=s.representative, data_source="validation data")
    s.out.debug(f"input range [{s.in_range.scale[0]:g}, {s.in_range.scale[1]:g}] from {s.in_range.source}")
    report["input_range"] = s.in_range.to_json()
    s.gate_data = _gate_data(s.stage_result, s.data, training, s.max_drop, s.out)


def convert(s: State) -> None:
    """The ``.tflite`` bytes; ``--keep-float auto``; TFLite metadata (normalization, labels)."""
    from edgeprune.quantize.convert import convert as to_tflite
    from edgeprune.ship import hooks as shipping

    options, profile, out = s.options, s.profile, s.out
    shipping.check_options(options, s.quant, profile, s.max_drop if s.gate_data is not None else None)
    with s.timer.stage("convert", f"Converting to TFLite ({s.quant})") as entry:
        s.tflite = to_tflite(s.model, s.quant, representative=s.representative, io=s.io,
                             int8_only=profile.operators.int8_only, input_shape=options.input_shape)
        entry["bytes"] = len(s.tflite)
        dynamic = _dynamic_inputs(s.model, options.input_shape)
        if dynamic:
            entry["dynamic_dims"] = dynamic
            out.warn(f"{dynamic[0]} is dynamic in the artifact (the interpreter allocates it as 1 until "
                     f"resized); pass --input-shape to fix it")
    if options.keep_float:
        with s.timer.stage("keep_float", "Keeping the worst int8 layers in float (measured)") as entry:
            s.tflite, s.report["keep_float"] = shipping.keep_float(s.model, s.original, s.tflite, s.representative,
                                                                   s.io, s.gate_data, s.max_drop, profile, out)
            entry["kept_float"] = s.report["keep_float"]["kept_float"]
    # the metadata's normalization describes the range decided above, not the profile's default
    scaled = profile.model_copy(update={"preprocessing": profile.preprocessing.model_copy(
        update={"scale": tuple(s.in_range.scale)})})
    s.tflite = shipping.with_metadata(s.tflite, s.model, scaled, options.labels)


def check(s: State) -> None:
    """Ops, tensors and arena of the artifact against the target's budgets (TFLM on an MCU)."""
    from edgeprune.device import budgets as budget_checks
    from edgeprune.quantize.convert import estimate_arena_bytes, io_details, op_counts

    with s.timer.stage("check", "Checking the artifact") as entry:
        s.ios = io_details(s.tflite)
        s.ops = op_counts(s.tflite)
        s.runtime_error = None  # why the target's runtime cannot run the artifact (it is rejected)
        if s.profile.operators.runtime == "tflm":  # budgets before TFLM, then TFLM in a child
            from edgeprune.quantize import tflm

            mcu = tflm.check_for_target(s.tflite, s.limits)
            s.arena, s.budgets, s.runtime_error = mcu.arena, mcu.budgets, mcu.error
        else:
            s.arena = {"bytes": estimate_arena_bytes(s.tflite),
                       "method": "estimate: peak bytes of live non-constant tensors"}
            s.budgets = budget_checks.check(s.limits, model_bytes=len(s.tflite), arena_bytes=s.arena["bytes"])
        entry["ops"] = sum(s.ops.values())


def gate(s: State) -> None:
    """The accuracy gate: the ``.tflite`` against the original model on data no selection saw."""
    s.gate_error = None
    if s.gate_data is None:
        return
    from edgeprune.device.gate import check_accuracy_gate

    gate_data, report = s.gate_data, s.report
    with s.timer.stage("gate", "Accuracy gate (interpreter vs original model)") as entry:
        try:
            report["accuracy_gate"] = check_accuracy_gate(s.tflite, s.original, gate_data[0], gate_data[1],
                                                          s.max_drop, mode=s.limits.gate_mode,
                                                          output=s.training.gate_output, source=gate_data[2])
        except VerificationError as exc:
            report["accuracy_gate"] = exc.result
            s.gate_error = exc
        entry.update(report["accuracy_gate"])
    if report["accuracy_gate"].get("note"):
        s.out.warn(report["accuracy_gate"]["note"])


def write(s: State) -> None:
    """manifest.json, report.json, model.tflite and the extras, swapped in atomically; a candidate
    that fails the gate, a budget or the runtime is kept as ``DIR.rejected`` and raises."""
    from edgeprune.device import budgets as budget_checks
    from edgeprune.ship import hooks as shipping

    options, profile, report, loaded, tflite = s.options, s.profile, s.report, s.loaded, s.tflite
    report["sizes"] = {"source_params": s.source_params, "source_bytes": path_bytes(loaded.path),
                       "tflite_bytes": len(tflite)}
    if s.prune_report is not None:
        report["sizes"]["pruned_params"] = int(s.model.count_params())
    report["arena"] = s.arena
    report["ops"] = s.ops
    report["budgets"] = s.budgets

    manifest = s.manifest = {
        "edgeprune": __version__,
        "versions": _versions(),
        "runtime": profile.operators.runtime,
        "source": {"path": str(loaded.path.resolve()), "sha256": loaded.sha256, "flavour": loaded.flavour,
                   "kind": loaded.kind, "keras_version": loaded.keras_version},
        "profile": profile.model_dump(mode="json"),
        "quantization": {"mode": s.quant, "io": s.io},
        "calibration": s.calibration_info,
        "input_range": s.in_range.to_json(),
        "artifact": {"file": "model.tflite", "sha256": sha256_bytes(tflite), "bytes": len(tflite)},
        "inputs": s.ios["inputs"],
        "outputs": s.ios["outputs"],
        "keras_outputs": list(s.output_names),  # the model's output names, in order (bench labels y_<name>)
        "options": {k: v for k, v in asdict(options).items() if k not in ("custom_objects", "recovery_hooks")},
        "study": options.study,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    extra_files = shipping.extra_files(tflite, manifest, s.representative, options.labels)

    dest = Path(s.output_dir)
    artifact = s.artifact
    with artifact as tmp:
        write_bytes_atomic(tmp / "model.tflite", tflite)
        if s.prune_report is not None:
            manifest["pruned_model"] = _keep_pruned_model(s.model, tmp, s.training, s.out,
                                                          origin_class=s.loaded.origin_class)
        write_json(tmp / "manifest.json", manifest)
        write_json(tmp / "report.json", report)
        shipping.write_extras(tmp, extra_files, s.out)
        if s.gate_error is not None:
            write_json(tmp / "GATE_FAILED.json", report["accuracy_gate"])
            kept = artifact.reject()
            raise VerificationError(f"{s.gate_error}; candidate kept in {kept}, nothing written to {dest}")
        failed = budget_checks.failures(s.budgets)
        if failed:
            kept = artifact.reject()
            detail = "; ".join(failed)
            raise BudgetError(f"target '{profile.name}': {detail}; candidate kept in {kept}, nothing written to {dest}")
        if s.runtime_error is not None:
            kept = artifact.reject()
            raise VerificationError(f"target '{profile.name}': {s.runtime_error}; candidate kept in {kept}, "
                                    f"nothing written to {dest}")
    s.out.debug(f"wrote {dest}")


# The compile pipeline, in order (docs/ARCHITECTURE.md lists the same names).
COMPILE: tuple[Stage, ...] = (load, calibrate, prune, train, convert, check, gate, write)


def run_stages(stages: Sequence[Stage], state: State) -> State:
    """Run ``stages`` in order over ``state``; each records itself in ``state.report``."""
    if state.timer is None:
        state.timer = _Stages(state.report, state.out)
    for stage in stages:
        stage(state)
    return state
