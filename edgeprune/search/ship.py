"""``edgeprune compile --from-study``: rebuild one trial of a study as a shipped artifact.

The study records what every trial shares (model, data, target: ``Base``) and each trial's
params; together they give the trial's exact CompileOptions (``pipeline.compile_options``),
so the artifact is built by the same pipeline the trial ran. The manifest records the study
and trial, and the trial's artifact sha256 to compare with.
"""
from __future__ import annotations

from pathlib import Path

from edgeprune.errors import InputError


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
    if final and final.get("accuracy") is not None:  # the trial was recovered in full after the search
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
    from edgeprune.model_io import sha256_file

    now = sha256_file(path / "saved_model.pb" if path.is_dir() else path)
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
    from edgeprune.compile import run_compile
    from edgeprune.console import default_output

    out = output or default_output()
    model_path, options, row = options_from_study(storage, study_name, pick, model=model)
    options.force = force
    out.info(f"study '{study_name}': trial {row['number']} {row['params']}")
    result = run_compile(model_path, output_dir, options, output=out)
    expected = (row.get("final") or {}).get("sha256") or row["sha256"]
    if expected and result.manifest["artifact"]["sha256"] != expected:
        out.warn(f"the rebuilt artifact's sha256 differs from trial {row['number']}'s "
                 "(training is not bit-for-bit reproducible); its numbers are in report.json")
    return result
