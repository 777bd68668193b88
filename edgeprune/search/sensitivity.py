"""Per-stage sensitivity: prune one stage alone at several ratios, measure the artifact.

Each point is one run of compile's pipeline (no recovery), the accuracy measured on the
converted artifact with the interpreter. The curves show where channels are cheap to take.
From them, an AIMET-style greedy allocation (AIMET's "greedy compression-ratio selection")
picks per-stage ratios for a MAC target: for an accuracy threshold t, every stage takes the
largest ratio whose accuracy stays >= t; the highest t whose summed MAC savings reach the
target wins. The allocation is one more way to set per-layer ratios next to the MAC and
latency targets, and a prior for ``edgeprune search --sensitivity``.
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

from edgeprune.base.console import Output, default_output
from edgeprune.base.errors import InputError
from edgeprune.pruning.sensitivity_allocation import FORMAT, greedy_allocation


def sensitivity(model_path, *, val_data: str, target: str = "x86-64", ratios=(0.25, 0.5, 0.75),
                quantize: str | None = None, criterion: str = "l1", calibration: str | None = None,
                target_macs=(0.75, 0.5), plot=None, json_path=None, custom_objects=None,
                unsafe: bool = False, protect=(), seed: int = 0, output: Output | None = None) -> dict:
    """Curves of artifact accuracy against each stage's pruning ratio, and greedy allocations."""
    from edgeprune.device.profiles import load_profile
    from edgeprune.load.datasets import input_range, load_arrays
    from edgeprune.load.model_io import load_model
    from edgeprune.pruning import macs as macs_mod
    from edgeprune.search.pipeline import Base, run_trial
    from edgeprune.search.space import Choice, find_stages

    out = output or default_output()
    ratios = sorted({float(r) for r in ratios})
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise InputError("--ratios: expected ratios in (0, 1)")
    for t in target_macs:
        if not 0.0 < float(t) <= 1.0:
            raise InputError(f"--target-macs: {t} is not in (0, 1]")
    profile = load_profile(target)
    quant = profile.check_quantization(quantize or profile.quantization.default.value)
    loaded = load_model(model_path, custom_objects=custom_objects, safe_mode=not unsafe)
    stages = find_stages(loaded.model, protect)
    if not stages:
        raise InputError(f"{model_path}: the model has no prunable stage")
    x, y = load_arrays(val_data, input_shape=tuple(loaded.model.inputs[0].shape),
                       preprocessing=input_range(profile, model=loaded.model))  # the model's, else none checked
    if y is None:
        raise InputError(f"--val-data {val_data}: sensitivity needs labelled data (x and y)")
    base = Base(model=str(Path(model_path).resolve()), target=str(target), val_data=str(val_data),
                calibration=calibration, seed=seed, custom_objects=custom_objects, unsafe=unsafe,
                protect=tuple(protect))
    base_macs = int(macs_mod.count(loaded.model)["macs"])

    def choice(stage_ratios):
        return Choice(ratio=None if stage_ratios else 0.0, stage_ratios=stage_ratios, criterion=criterion,
                      round_to=profile.pruning.round_to, quantization=quant, finetune_epochs=0, distill=False)

    curves = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-sensitivity-") as tmp, \
            out.progress("sensitivity", total=1 + len(stages) * len(ratios)) as bar:
        def measure(name, stage_ratios):
            res = run_trial(base, choice(stage_ratios), stages, Path(tmp) / name, eval_data=(x, y),
                            latency=None, profile=profile, baseline_macs=base_macs)
            bar.advance()
            return res

        ref = measure("unpruned", {})
        for i, stage in enumerate(stages):
            points = [{"ratio": 0.0, "accuracy": ref.accuracy, "macs": base_macs}]
            for r in ratios:
                res = measure(f"s{i}-{r}", {stage.name: r})
                points.append({"ratio": r, "accuracy": res.accuracy, "macs": int(res.macs or base_macs)})
            curves.append({**stage.to_dict(), "points": points})

    result = {"format": FORMAT, "model": str(model_path), "target": profile.name, "quantization": quant,
              "criterion": criterion, "baseline": {"accuracy": ref.accuracy, "macs": base_macs},
              "stages": curves,
              "allocations": [greedy_allocation(curves, base_macs, float(t)) for t in target_macs]}
    if plot:
        result["plot"] = str(plot_curves(result, Path(plot)))
    if json_path:
        from edgeprune.base.artifacts import write_json

        write_json(Path(json_path), result)
    return result


def plot_curves(result: dict, path: Path) -> Path:
    """PNG: accuracy of the artifact against each stage's pruning ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeprune.base.artifacts import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for c in result["stages"]:
        pts = c["points"]
        ax.plot([p["ratio"] for p in pts], [p["accuracy"] for p in pts], marker="o",
                label=f"{c['name']} ({c['channels']} ch)")
    ax.axhline(result["baseline"]["accuracy"], c="k", lw=0.6, ls="--", label="unpruned artifact")
    ax.set_xlabel("fraction of the stage's channels removed")
    ax.set_ylabel("accuracy (artifact)")
    ax.set_title(f"Sensitivity on {result['target']} ({result['quantization']}, {result['criterion']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path
