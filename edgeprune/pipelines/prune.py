"""``edgeprune prune`` as one Python function: a model file in, a smaller model file out.

:func:`prune` takes exactly what the command takes (the pruning target, the allocation and
the training options) so the CLI only parses and prints. In-memory models go through
:func:`edgeprune.pruning.api.prune_model`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import InputError
from edgeprune.pruning.criteria import CRITERIA, DATA_CRITERIA

LATENCY_OBJECTIVES = ("macs", "importance")
_RENAMED = {"data": "calibration"}  # old keyword -> current one (deprecated alias)


def _training_options(training, extra: dict):
    from edgeprune.training.options import TrainingOptions, build_options

    if training is None:
        return build_options(extra)
    if isinstance(training, dict):
        return build_options({**training, **extra})
    if isinstance(training, TrainingOptions):
        return build_options({**training.model_dump(), **extra}) if extra else training
    raise InputError(f"training must be TrainingOptions or a dict, got {type(training).__name__}")


def check_prune_options(ratio, target_macs, target_latency, latency_table, threads, criterion, calibration,
                        output_path, training) -> None:
    """The one-line refusals of ``edgeprune prune``, before anything is loaded."""
    if training.qat:
        raise InputError("--qat produces a model meant for int8 conversion: use `edgeprune compile --qat`")
    for flag, value in (("--max-accuracy-drop", training.max_accuracy_drop), ("--gate-data", training.gate_data),
                        ("--gate-output", training.gate_output)):
        if value is not None:
            raise InputError(f"{flag} gates the converted .tflite: use `edgeprune compile`")
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
    if criterion is not None and criterion not in CRITERIA:
        raise InputError(f"--criterion: unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    if criterion in DATA_CRITERIA and calibration is None:
        raise InputError(f"--criterion {criterion} needs calibration data: pass --calibration FILE")
    if Path(output_path).suffix not in (".keras", ".h5"):
        raise InputError(f"-o {output_path}: expected a .keras or .h5 file name")


def prune(model_path, output_path, *, ratio: float | None = None, target_macs: float | None = None,
          target_latency: float | None = None, criterion: str | None = None, protect=(), per_layer: dict | None = None,
          global_ranking: bool = False, max_ratio: float = 0.9, round_to: int | None = None,
          min_channels: int | None = None, target: str | None = None, threads: int | None = None,
          latency_table=None, latency_objective: str = "macs", latency_quantization: str = "float32",
          calibration=None, seed: int = 0, input_shape=None, custom_objects=None, safe_mode: bool = True,
          training=None, sensitivity=None, attention_unit: str | None = None, output: Output | None = None,
          **training_kwargs: Any):
    """Prune the model file ``model_path`` and save it to ``output_path`` in the same Keras flavour.

    The options are those of ``edgeprune prune`` (one keyword per flag, same names).
    ``training`` is a TrainingOptions or a dict; training flags may also be given directly
    (``train_data=``, ``finetune_epochs=``, ``distill=``, ``iterative_steps=`` ...).
    ``calibration`` is a data source (.npy/.npz, image folder, module:function) or an array.
    ``sensitivity`` (a file from ``edgeprune sensitivity``) with ``target_macs``: per-stage ratios
    chosen by the AIMET-style greedy allocation on the measured accuracy curves.
    ``attention_unit``: ``"dims"`` or ``"heads"``, what pruning removes inside a MultiHeadAttention
    (:func:`edgeprune.pruning.rules.attention.attention_unit`); None: dims.
    Returns :class:`edgeprune.pruning.api.PruneResult` whose ``report`` is what ``--json`` prints.
    """
    import numpy as np

    for old, new in _RENAMED.items():
        if old in training_kwargs:
            import warnings

            warnings.warn(f"prune({old}=...) is deprecated: use {new}=...", DeprecationWarning, stacklevel=2)
            value = training_kwargs.pop(old)
            calibration = value if calibration is None else calibration
    out = output or default_output()
    options = _training_options(training, training_kwargs)
    greedy = None
    if sensitivity is not None:
        if target_macs is None:
            raise InputError("--sensitivity needs --target-macs (the MAC fraction to allocate for)")
        from edgeprune.pruning.sensitivity_allocation import per_layer_from_file

        greedy = per_layer_from_file(sensitivity, target_macs)
        per_layer = {**greedy["per_layer"], **(per_layer or {})}
        ratio, target_macs = 0.0, None
    check_prune_options(ratio, target_macs, target_latency, latency_table, threads, criterion, calibration,
                        output_path, options)
    # imported here: the rules need numpy, and `--help` must not load it
    from edgeprune.pruning.rules.attention import check_attention_unit

    check_attention_unit(attention_unit)
    model_path, output_path = Path(model_path), Path(output_path)
    if not model_path.exists():
        raise InputError(f"{model_path}: no such file or directory")
    if target:
        from edgeprune.device.profiles import load_profile

        profile = load_profile(target)
        round_to = profile.pruning.round_to if round_to is None else round_to
        min_channels = profile.pruning.min_channels if min_channels is None else min_channels
        threads = profile.threads if threads is None else threads
    round_to = 1 if round_to is None else round_to
    min_channels = 1 if min_channels is None else min_channels

    from edgeprune.load import model_io
    from edgeprune.load.model_io.savedmodel import require_keras
    from edgeprune.load.shapes import with_input_shape
    from edgeprune.pruning.api import PruneResult, prune_model

    objects = model_io.load_custom_objects(custom_objects) if isinstance(custom_objects, (str, Path)) else custom_objects
    with out.progress(f"loading {model_path}"):
        loaded = model_io.load_model(model_path, custom_objects=objects, safe_mode=safe_mode)
    require_keras(loaded.model, "pruning", model_path)
    model = with_input_shape(loaded.model, input_shape)
    x = y = None
    if calibration is not None:
        if isinstance(calibration, (str, Path)):
            with out.progress(f"loading data {calibration}"):
                from edgeprune.load.datasets import load_arrays

                x, y = load_arrays(str(calibration), input_shape=tuple(model.input_shape), num_samples=256,
                                   seed=seed, check_range=False)
        else:
            x = np.asarray(calibration)
    elif criterion is None and options.train_data and not options.sparsity_epochs:
        # the default criterion scores channels on inputs when there are any (criteria.default_criterion)
        from edgeprune.load.datasets import load_arrays
        from edgeprune.pruning.criteria import SCORING_SAMPLES

        with out.progress(f"loading a sample of {options.train_data} to rank channels on"):
            x, y = load_arrays(str(options.train_data), input_shape=tuple(model.input_shape),
                               num_samples=SCORING_SAMPLES, seed=seed, check_range=False, flag="train-data")
    prune_kwargs = dict(ratio=ratio, target_macs=target_macs, criterion=criterion, protect=tuple(protect),
                        per_layer=per_layer or None, global_ranking=global_ranking, max_ratio=max_ratio,
                        round_to=round_to, min_channels=min_channels, data=x, labels=y, seed=seed,
                        attention_unit=attention_unit)
    if target_latency is not None:
        prune_kwargs.update(target_latency=target_latency, latency_table=latency_table, threads=threads or 1,
                            latency_quantization=latency_quantization, latency_objective=latency_objective)
    if options.wants_training:
        from edgeprune.training.api import run_training_stage

        iterative = options.prunes_in_training  # in steps, or after a sparsity phase
        first = None
        if not iterative:
            with out.progress("analysing channel groups and pruning"):
                first = prune_model(model, **prune_kwargs)
        stage = run_training_stage(first.model if first else model, options, original=model,
                                   prune_kwargs=prune_kwargs if iterative else None, calibration=x, gate=False,
                                   output=out)
        result = PruneResult(model=stage.model, report=stage.pruned_report if iterative else first.report)
        result.report["training"] = stage.report
    else:
        with out.progress("analysing channel groups and pruning") as bar:
            if target_latency is not None:
                prune_kwargs["progress"] = lambda done, total: bar.update(
                    f"measuring layer latency {done}/{total}" if done < total else "pruning")
            result = prune_model(model, **prune_kwargs)
    pruned = result.model
    if model is not loaded.model:  # --input-shape was for the analysis: keep the file's signature
        pruned = _restore_inputs(pruned, loaded.model)
    with out.progress(f"saving {output_path}"):
        model_io.save_model(pruned, output_path, flavour=loaded.flavour, origin_class=loaded.origin_class)
    if loaded.origin_class:  # a keras.Model subclass: saved as a plain functional Model
        result.report["saved_as"] = {"class": "Functional", "from": loaded.origin_class}
        result.report.setdefault("notes", []).append(model_io.saved_as_note(loaded.origin_class))
    result.model = pruned
    result.report.update({"input": str(model_path), "output": str(output_path), "flavour": loaded.flavour,
                          "round_to": round_to, "min_channels": min_channels, "target": target})
    if input_shape:
        result.report["input_shape"] = [list(s) for s in (tuple(t.shape) for t in model.inputs)]
    if greedy is not None:
        result.report["sensitivity_allocation"] = {k: v for k, v in greedy.items() if k != "per_layer"}
    return result


def _restore_inputs(pruned, original):
    """``pruned`` rebuilt with ``original``'s input shapes (unknown dimensions unknown again)."""
    from edgeprune.load.shapes import rebuild_with_shapes

    return rebuild_with_shapes(pruned, [tuple(None if d is None else int(d) for d in t.shape)
                                        for t in original.inputs])
