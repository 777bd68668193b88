"""``edgeprune compile --from-study``: rebuild one trial of a study as a shipped artifact.

The study records what every trial shares (model, data, target: ``Base``) and each trial's
params; together they give the trial's exact CompileOptions (``pipeline.compile_options``),
so the artifact is built by the same pipeline the trial ran. The manifest records the study
and trial, and the trial's artifact sha256 to compare with.
"""
from __future__ import annotations

from pathlib import Path

from edgeprune.base.errors import InputError


def options_from_study(storage: str, study_name: str, pick: str = "best", *, model=None,
                       output=None):
    """(model path, CompileOptions, picked trial row) for ``--from-study``."""
    import warnings

    import optuna

    from edgeprune.search import study as st
    from edgeprune.search.pipeline import Base, compile_options
    from edgeprune.search.space import Stage, decode

    if not study_name:
        raise InputError("--from-study needs --study-name")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if str(storage).startswith("sqlite:///") and not Path(str(storage)[len("sqlite:///"):]).is_file():
        raise InputError(f"--from-study {storage}: no such file")
    rdb = st.storage_for(storage, None)
    try:
        study = optuna.load_study(study_name=study_name, storage=rdb)
    except KeyError:
        raise InputError(f"--study-name {study_name}: no such study in {st.redact(storage)}") from None
    config = study.user_attrs.get(st.ATTR_CONFIG)
    if not config:
        raise InputError(f"--study-name {study_name}: the study was not made by edgeprune search")
    row = st.pick(st.rows(study), pick, study_name)
    base = Base.from_dict(config["base"])
    if model is not None:  # the model on this machine; it must be the study's model
        if not Path(model).exists():
            raise InputError(f"{model}: model not found")
        _check_study_model(Path(model), model, base.model, config["model_sha256"], study_name)
        base.model = str(Path(model).resolve())
    elif not Path(base.model).exists():
        raise InputError(f"--from-study: the study's model {base.model} is not on this machine; pass MODEL")
    else:
        _check_study_model(Path(base.model), base.model, base.model, config["model_sha256"], study_name)
    stages = [Stage(s["name"], s["producers"], s["channels"]) for s in config["space"]["stages"]]
    provenance = {"storage": st.redact(storage), "study_name": study_name, "trial": row["number"],
                  "pick": pick, "params": row["params"], "trial_sha256": row["sha256"],
                  "trial_metrics": {k: row[k] for k in ("accuracy", "latency_ms", "latency_source",
                                                        "model_bytes", "device")}}
    choice = decode(row["params"])
    final = row.get("final")
    if final and final.get("feasible"):  # the trial was recovered in full after the search, within budgets
        from dataclasses import replace

        choice = replace(choice, finetune_epochs=int(final["epochs"]))
        provenance.update(final_epochs=int(final["epochs"]), final_accuracy=final["accuracy"],
                          trial_sha256=final.get("sha256"))
    options = compile_options(base, choice, stages, study=provenance)
    options.force = False
    return base.model, options, row


def _check_study_model(path: Path, shown: str, searched: str, searched_sha256: str, study_name: str) -> None:
    """InputError unless ``path`` holds the bytes the study searched (a trial's per-layer ratios
    and its numbers belong to those weights). The message says which of two things happened:
    the file the study searched was changed since, or a different file was given."""
    from edgeprune.load.model_io import model_sha256

    now = model_sha256(path)  # a SavedModel: its graph and its variables
    if now == searched_sha256:
        return
    hashes = f"sha256 {searched_sha256[:12]} when searched, {now[:12]} now"
    if path.resolve() == Path(searched).resolve():
        raise InputError(f"{shown}: changed since study '{study_name}' searched it ({hashes}); "
                         f"restore that model or search again")
    raise InputError(f"{shown}: a different model from the one study '{study_name}' searched, {searched} "
                     f"(sha256 {searched_sha256[:12]}; this file {now[:12]}); pass that model or search again")


def compile_from_study(storage: str, study_name: str, output_dir, *, pick: str = "best", model=None,
                       force: bool = False, output=None):
    """Python API of ``compile --from-study``: a CompileResult whose manifest records the trial."""
    from edgeprune.base.console import default_output
    from edgeprune.pipelines.compile import run_compile

    out = output or default_output()
    model_path, options, row = options_from_study(storage, study_name, pick, model=model)
    options.force = force
    out.info(f"study '{study_name}': trial {row['number']} {row['params']}")
    result = run_compile(model_path, output_dir, options, output=out)
    written = _trial_manifest(result.tflite_path) or result.manifest  # as JSON, like the trial's
    why = rebuild_difference(row, written, result.report)
    if why is not None:
        out.warn(f"the rebuilt artifact's sha256 differs from trial {row['number']}'s ({why}); "
                 "its numbers are in report.json")
    return result


def rebuild_difference(row: dict, manifest: dict, report: dict) -> str | None:
    """Why the rebuilt artifact's sha256 differs from the trial's, in words; None when it does not.

    The same options, model, data and tool versions give the same bytes when nothing trains
    (pruning, calibration and conversion are deterministic), so the causes named are the ones
    that can be seen: tool versions, calibration data or options that differ from the trial's
    own manifest (when its artifact is still on this machine), and training (fine-tuning,
    distillation, QAT, sparsity: not bit-for-bit reproducible) only when the rebuild trained."""
    final = row.get("final") or {}
    expected = final.get("sha256") or row.get("sha256")
    if not expected or manifest["artifact"]["sha256"] == expected:
        return None
    then = _trial_manifest(final.get("artifact") or row.get("artifact"))
    causes = _recorded_differences(then, manifest)
    training = _training_of(report)
    if training:
        causes.append(f"{training} is not bit-for-bit reproducible")
    if causes:
        return "; ".join(causes)
    if then is None:
        return ("no training; the trial's artifact is not on this machine to compare tool versions and "
                "calibration data with, the usual causes")
    return "no training, and the trial's manifest records the same tool versions, calibration data and options"


def _trial_manifest(artifact) -> dict | None:
    """manifest.json beside the trial's model.tflite (or its DIR.rejected), when still on disk."""
    import json

    if not artifact:
        return None
    try:
        manifest = json.loads((Path(artifact).parent / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


# Options that differ between a trial and its rebuild by design (provenance, overwrite).
_NOT_COMPARED = ("study", "force")


def _recorded_differences(then: dict | None, now: dict) -> list[str]:
    """What the trial's manifest and the rebuild's record differently: tool versions, the
    calibration data's hash, compile options."""
    if then is None:
        return []
    causes = []
    versions_then, versions_now = then.get("versions") or {}, now.get("versions") or {}
    changed = [f"{name} {versions_then.get(name)} then, {versions_now.get(name)} now"
               for name in sorted(set(versions_then) | set(versions_now))
               if versions_then.get(name) != versions_now.get(name)]
    if changed:
        causes.append("other tool versions: " + ", ".join(changed))
    if (then.get("calibration") or {}).get("sha256") != (now.get("calibration") or {}).get("sha256"):
        causes.append("other calibration data: the file changed since the search")
    options_then, options_now = then.get("options") or {}, now.get("options") or {}
    differ = sorted(k for k in set(options_then) | set(options_now)
                    if k not in _NOT_COMPARED and options_then.get(k) != options_now.get(k))
    if differ:
        causes.append("other options: " + ", ".join(differ))
    return causes


def _training_of(report: dict) -> str | None:
    """The training the rebuild ran (report.json's training section), or None when it ran none."""
    training = report.get("training") or {}
    recovery = (training.get("recovery") or {}).get("method")
    ran = [recovery] if recovery in ("fine-tuning", "distillation") else []
    ran += [name for name, key in (("QAT", "qat"), ("sparsity training", "sparsity"),
                                   ("structured sparsity", "structured_sparsity")) if training.get(key)]
    return " and ".join(ran) or None
