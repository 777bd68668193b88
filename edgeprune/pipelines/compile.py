"""The compile pipeline: load → calibrate → prune → train → convert → check → gate → write.

The stages live in :mod:`edgeprune.pipelines.stages` (one signature, ``stage(state)``); each
appends ``{"name", "seconds", ...}`` to ``report["stages"]``. Adding an option is one field on
:class:`CompileOptions`; adding a stage is one function in ``stages.py`` placed in its
``COMPILE`` list. The artifact directory is written atomically; a candidate that breaks a
budget is kept as ``DIR.rejected`` and the compile fails (BudgetError, exit 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeprune.base.artifacts import (
    ArtifactDir,
)
from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import InputError

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
    attention_unit: str | None = None  # "dims" | "heads" inside a MultiHeadAttention; None: dims
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


def run_compile(model_path, output_dir, options: CompileOptions | None = None, *,
                output: Output | None = None) -> CompileResult:
    """Compile ``model_path`` into ``output_dir`` (model.tflite, manifest.json, report.json):
    the options checked, then the stages of :data:`edgeprune.pipelines.stages.COMPILE`."""
    from edgeprune.device.profiles import load_profile
    from edgeprune.load.datasets import parse_input_range
    from edgeprune.pipelines.stages import COMPILE, State, run_stages

    options = options or CompileOptions()
    out = output or default_output()
    profile = load_profile(options.target)
    quant, io = _resolve_modes(options, profile)
    parse_input_range(options.input_range)  # a bad --input-range fails before the model loads
    from edgeprune.pruning.rules.attention import check_attention_unit

    check_attention_unit(options.attention_unit)
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
        state = State(model_path=model_path, output_dir=output_dir, options=options, profile=profile,
                      quant=quant, io=io, out=out, artifact=artifact)
        run_stages(COMPILE, state)
        dest = Path(output_dir)
        return CompileResult(dest, dest / "model.tflite", state.manifest, state.report)
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
