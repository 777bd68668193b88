"""One search trial = one run of compile's own pipeline, then measurements of its artifact.

A trial's settings become :class:`edgeprune.pipelines.compile.CompileOptions` and go through
:func:`edgeprune.pipelines.compile.run_compile`: prune, recover (fine-tune / distil), convert, check
the budgets (model bytes, arena bytes, the TFLM interpreter for ``runtime: tflm``) and the
accuracy gate. There is no second budget checker here: a candidate compile rejects is kept
as ``DIR.rejected`` and its checks are read back from its report. Accuracy is measured on
the converted artifact with the harness's interpreter; latency on the profile's device with
the harness (``edgeprune bench``: local, SSH or a fleet), or predicted from a latency table
measured on that device.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeprune.base.console import Output
from edgeprune.base.errors import BudgetError, InputError, VerificationError


@dataclass
class Base:
    """What every trial of a study shares (stored in the study, reused by ``--from-study``)."""

    model: str
    target: str
    val_data: str
    train_data: str | None = None
    calibration: str | None = None
    num_samples: int | None = 200
    seed: int = 0
    custom_objects: str | None = None
    unsafe: bool = False
    protect: tuple = ()
    max_accuracy_drop: float | None = None
    batch_size: int = 32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["protect"] = list(self.protect)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Base:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["protect"] = tuple(known.get("protect") or ())
        return cls(**known)


def compile_options(base: Base, choice, stages, *, study: dict | None = None):
    """The CompileOptions of one trial: exactly what ``compile --from-study`` rebuilds."""
    from edgeprune.pipelines.compile import CompileOptions
    from edgeprune.training.options import TrainingOptions

    per_layer = choice.per_layer(stages) or None
    if choice.ratio:
        prune = float(choice.ratio)
    else:
        prune = 0.0 if per_layer else None
    training = TrainingOptions(
        train_data=base.train_data, val_data=base.val_data, finetune_epochs=choice.finetune_epochs,
        distill=choice.distill, max_accuracy_drop=base.max_accuracy_drop, seed=base.seed,
        batch_size=base.batch_size)
    return CompileOptions(
        target=base.target, quantize=choice.quantization,
        # int8 needs representative data: the validation inputs unless calibration data is given
        calibration=base.calibration or base.val_data, num_samples=base.num_samples, seed=base.seed,
        custom_objects=base.custom_objects, unsafe=base.unsafe, ratio=prune, per_layer=per_layer,
        criterion=choice.criterion, round_to=choice.round_to, protect=tuple(base.protect),
        training=training, study=study, force=True)


@dataclass
class TrialResult:
    """What one trial measured. ``constraints``: one value per budget, feasible when <= 0."""

    status: str  # "ok" | "rejected" (compile kept DIR.rejected)
    artifact: str  # path of model.tflite
    sha256: str
    model_bytes: int
    arena_bytes: int | None
    macs: int | None
    accuracy: float | None
    latency_ms: float | None = None
    latency_source: str | None = None  # "measured" | "predicted"
    device: str | None = None
    violations: list = field(default_factory=list)
    constraints: dict = field(default_factory=dict)
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def run_trial(base: Base, choice, stages, out_dir: Path, *, eval_data, latency, profile,
              baseline_macs: int | None = None, recovery_hooks=()) -> TrialResult:
    """Compile one candidate into ``out_dir`` and measure it (accuracy, latency).

    ``recovery_hooks``: ``hook(epoch, logs)`` functions called after every recovery epoch (the
    search's pruner: an exception they raise ends the trial and propagates)."""
    from edgeprune.base.artifacts import rejected_path
    from edgeprune.device.api import evaluate_tflite
    from edgeprune.pipelines.compile import run_compile

    options = compile_options(base, choice, stages)
    options.recovery_hooks = tuple(recovery_hooks)
    quiet = Output(quiet=True)
    status, reason = "ok", None
    try:
        result = run_compile(base.model, out_dir, options, output=quiet)
        folder, manifest, report = result.output_dir, result.manifest, result.report
    except (BudgetError, VerificationError) as exc:
        folder = rejected_path(Path(out_dir))
        if not (folder / "report.json").is_file():
            raise
        status, reason = "rejected", str(exc).split("; candidate kept")[0]
        manifest = json.loads((folder / "manifest.json").read_text())
        report = json.loads((folder / "report.json").read_text())
    tflite = folder / "model.tflite"
    x, y = eval_data
    accuracy = evaluate_tflite(tflite, x, y, threads=profile.threads)["accuracy"]
    pruning = report.get("pruning") or {}
    res = TrialResult(status=status, artifact=str(tflite), sha256=manifest["artifact"]["sha256"],
                      model_bytes=int(manifest["artifact"]["bytes"]), arena_bytes=report["arena"]["bytes"],
                      macs=pruning.get("macs_after", baseline_macs), accuracy=accuracy, reason=reason)
    # compile's own checks, as Optuna constraints (relative excess; <= 0 means within budget)
    for check in report["budgets"]:
        res.constraints[check["budget"]] = (check["actual"] - check["limit"]) / check["limit"]
        if not check["ok"]:
            res.violations.append(f"{check['budget']} {check['actual']} > {check['limit']}")
    # the target's runtime refused it (compile's TFLM check: a predicted abort or a TFLM failure),
    # not a budget: without a positive constraint a constrained sampler would see it as feasible
    arena = report.get("arena") or {}
    over_budget = any(not check["ok"] for check in report["budgets"])  # TFLM was skipped for that
    refusal = arena.get("tflm_error") or (None if over_budget else arena.get("tflm_skipped"))
    if refusal:
        res.constraints["runtime"] = 1.0
        res.violations.append(f"{manifest.get('runtime') or 'the runtime'} cannot run it: {refusal}")
    gate = report.get("accuracy_gate")
    if gate and gate.get("max_drop_points") is not None:
        res.constraints["max_accuracy_drop"] = float(gate["drop_points"]) - float(gate["max_drop_points"])
        if not gate["passed"]:
            res.violations.append(f"accuracy drop {gate['drop_points']:.2f} pt > {gate['max_drop_points']} pt")
    if latency is not None:
        latency.measure_into(res, tflite, report, choice)
    return res


class Latency:
    """Latency of a trial's artifact: measured on the profile's device(s) through the harness,
    or predicted from a per-layer table measured on that device (``--latency-table``)."""

    def __init__(self, profile, target: str, *, table: str | None = None, model=None, hosts=(),
                 fleet=None, runs: int = 20, warmup: int = 2):
        self.profile, self.target = profile, target
        self.hosts, self.fleet, self.runs, self.warmup = tuple(hosts), fleet, runs, warmup
        self.budget = profile.budgets.max_latency_ms
        self.table = self.graph = None
        if table is not None:
            from edgeprune.load.graph import trace
            from edgeprune.pruning.latency import LatencyTable

            self.table = LatencyTable.load(Path(table))
            self.graph = trace(model)

    @property
    def source(self) -> str:
        return "predicted" if self.table is not None else "measured"

    def measure(self, tflite) -> tuple[float, str]:
        """(p50 ms of the slowest device, device labels) from ``edgeprune bench``."""
        from edgeprune.device.api import bench
        from edgeprune.device.verify import best_latency

        try:
            result = bench(str(tflite), target=self.target, hosts=self.hosts, fleet=self.fleet,
                           threads=(self.profile.threads,), runs=self.runs, warmup=self.warmup,
                           output=Output(quiet=True))
        except VerificationError as exc:  # over the latency budget: the result is still complete
            result = exc.result
        rows = [(d["host"], best_latency(d)) for d in result["devices"]]
        rows = [(h, b[1]) for h, b in rows if b is not None]
        if not rows:
            raise InputError(f"{tflite}: the bench returned no latency")
        return max(ms for _, ms in rows), ",".join(h for h, _ in rows)

    def predict(self, report: dict) -> float:
        counts = channel_counts(self.graph, report.get("pruning"))
        return self.table.predict(self.graph, counts) / 1000.0

    def measure_into(self, res: TrialResult, tflite, report: dict, choice) -> None:
        if self.table is not None:
            res.latency_ms, res.device = self.predict(report), f"table:{self.table.meta.get('cpu') or '?'}"
        else:
            res.latency_ms, res.device = self.measure(tflite)
        res.latency_source = self.source
        if self.budget is not None:
            res.constraints["max_latency_ms"] = (res.latency_ms - self.budget) / self.budget
            if res.latency_ms > self.budget:
                res.violations.append(f"latency {res.latency_ms:.3f} ms > {self.budget:g} ms ({self.source})")


def channel_counts(graph, pruning_report: dict | None) -> dict:
    """tensor key -> channels after pruning, from compile's per-layer pruning report.

    Layers with weights are in the report; every other layer passes its first input's count
    on (activations, pooling, Flatten, residual adds), a Concatenate sums its inputs. This is
    what :meth:`LatencyTable.predict` needs for the original graph."""
    if not pruning_report:
        return {}
    after = {row["name"]: int(row["channels_after"]) for row in pruning_report.get("layers", [])}
    counts: dict = {}
    for name, node in graph.layers.items():
        for key in node.outputs:
            t = graph.tensors[key]
            if name in after:
                counts[key] = after[name] // max(t.spatial, 1)
            elif node.class_name == "Concatenate" and node.inputs:
                counts[key] = sum(counts.get(k, graph.tensors[k].channels) for k in node.inputs)
            elif node.inputs:
                k = node.inputs[0]
                src = counts.get(k, graph.tensors[k].channels)
                counts[key] = src if src <= t.channels else t.channels
            else:
                counts[key] = t.channels
    return counts


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
