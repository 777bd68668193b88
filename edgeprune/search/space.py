"""What a search trial may vary, and how one set of choices becomes compile options.

The space has sensible defaults taken from the profile and the command line, and a YAML
file (``--space``) validated by Pydantic overrides any field. Per-stage ratios use *stages*
found from the dependency graph: prunable channel groups whose producers write tensors of
the same spatial resolution (a ResNet/MobileNet stage; all Dense layers form one stage).
A trial either prunes every group by one global ratio or, with ``per_stage: true``, gives
each stage its own ratio (the allocator accepts per-layer ratios, so a stage's ratio is a
per-layer entry for each producer of its groups).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeprune.base.errors import InputError

PARAM_STAGE = "stage:"  # Optuna parameter name prefix of a per-stage ratio

# Recovery epochs a trial may get when there is training data. A pruned trial that is not
# recovered says little about what the pruning costs once recovered (ratio 0.25 of a small
# CNN scored 36.5 % untrained), so every trial recovers; the pruner stops the unpromising
# ones after their first epoch, and the final candidates get the full recovery
# (``search --final-epochs``).
RECOVERY_EPOCHS = [2, 4]

# Quantization modes left out of the default space: int16x8 runs on the reference kernels
# on CPUs (no XNNPACK), about 30x slower than int8; a user who wants it names it (--quantize).
SLOW_BY_DEFAULT = ("int16x8",)


def _ratio_list(value: list[float]) -> list[float]:
    for r in value:
        if not 0.0 <= float(r) < 1.0:
            raise ValueError(f"ratio {r} is outside [0, 1)")
    if not value:
        raise ValueError("must not be empty")
    return [float(r) for r in value]


class SpaceConfig(BaseModel):
    """The search space; also the schema of a ``--space`` YAML file (every field optional)."""

    model_config = ConfigDict(extra="forbid")

    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75])
    per_stage: bool = False
    stage_ratios: list[float] | None = None  # per-stage choices (default: ratios)
    # taylor: the measured default (pruning.criteria.default_criterion); a search always has
    # inputs to score on (--calibration, else the validation data)
    criteria: list[str] = Field(default_factory=lambda: ["taylor"])
    round_to: list[int] | None = None  # default: the profile's pruning.round_to
    quantizations: list[str] | None = None  # default: every mode the profile allows
    finetune_epochs: list[int] | None = None  # default: RECOVERY_EPOCHS with --train-data, else [0]
    distill: list[bool] = Field(default_factory=lambda: [False])

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v):
        return _ratio_list(v)

    @field_validator("stage_ratios")
    @classmethod
    def _stage_ratios(cls, v):
        return None if v is None else _ratio_list(v)

    @field_validator("criteria", "finetune_epochs", "distill")
    @classmethod
    def _not_empty(cls, v):
        if v is not None and not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("round_to")
    @classmethod
    def _round_to(cls, v):
        if v is not None and (not v or any(int(r) < 1 for r in v)):
            raise ValueError("rounding multiples must be integers >= 1 (and the list not empty)")
        return v

    @field_validator("finetune_epochs")
    @classmethod
    def _epochs(cls, v):
        if v is not None and any(int(e) < 0 for e in v):
            raise ValueError("epochs must be >= 0")
        return v


def load_space(path) -> SpaceConfig:
    """A ``--space`` YAML file, validated; errors name the file and the field."""
    from edgeprune.base.yamlfile import read_yaml

    data = read_yaml(path, f"--space {path}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"--space {path}: the search space must be a YAML mapping")
    try:
        return SpaceConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise InputError(f"--space {path}: {loc}: {err['msg']}") from None


@dataclass
class Stage:
    """Prunable groups whose producers write tensors of one spatial resolution."""

    name: str  # "s0-28x28", ..., "dense"
    producers: list  # layer names (per-layer keys)
    channels: int  # prunable channels in the stage

    def to_dict(self) -> dict:
        return {"name": self.name, "producers": list(self.producers), "channels": self.channels}


def find_stages(model, protect=()) -> list[Stage]:
    """Stages of a tf_keras model from its dependency graph (edgeprune.pruning)."""
    from edgeprune.load.graph import trace
    from edgeprune.pruning.groups import build_groups

    graph = trace(model)
    gs = build_groups(graph, protect)
    by_res: dict[tuple, list] = {}
    for g in gs.prunable:
        if not g.producers:
            continue
        node = graph.layers[g.producers[0]]
        shape = tuple(graph.tensors[node.outputs[0]].shape[:-1]) if node.outputs else ()
        by_res.setdefault(shape, []).append(g)
    # highest resolution first, the Dense stage (no spatial axes) last
    order = sorted(by_res, key=lambda s: (-(len(s) > 0), -_area(s)))
    stages = []
    for i, shape in enumerate(order):
        groups = by_res[shape]
        label = "x".join(str(d) for d in shape) if shape else "dense"
        name = f"s{i}-{label}" if shape else "dense"
        producers = [p for g in groups for p in g.producers]
        stages.append(Stage(name, producers, int(sum(g.size for g in groups))))
    return stages


def _area(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d or 1)
    return n


@dataclass
class Choice:
    """One trial's settings (Optuna params, decoded)."""

    ratio: float | None  # global ratio (None with per-stage ratios)
    stage_ratios: dict  # stage name -> ratio
    criterion: str
    round_to: int
    quantization: str
    finetune_epochs: int
    distill: bool

    def per_layer(self, stages: list[Stage]) -> dict:
        """Per-layer ratios (exact-name regexes) for the stages' producers."""
        out = {}
        for stage in stages:
            r = self.stage_ratios.get(stage.name)
            if r:
                for name in stage.producers:
                    out[re.escape(name)] = float(r)
        return out

    @property
    def prunes(self) -> bool:
        return bool(self.ratio) or any(self.stage_ratios.values())


class Space:
    """A validated space bound to a model's stages and a profile's defaults."""

    def __init__(self, config: SpaceConfig, profile, stages: list[Stage], *, trains: bool = False):
        allowed = [q.value for q in profile.quantization.allowed]
        self.config = config
        self.stages = stages
        fast = [q for q in allowed if q not in SLOW_BY_DEFAULT]
        self.quantizations = list(config.quantizations or fast or allowed)
        # ``trains``: the search has training data, so trials recover by default
        self.finetune_epochs = [int(e) for e in (config.finetune_epochs if config.finetune_epochs is not None
                                                 else RECOVERY_EPOCHS if trains else [0])]
        if any(self.finetune_epochs) and not trains and not any(config.distill):
            raise InputError("the search space has finetune_epochs > 0 but no --train-data to fine-tune on")
        for q in self.quantizations:
            profile.check_quantization(q)
        self.round_to = [int(r) for r in (config.round_to or [profile.pruning.round_to])]
        self.stage_ratios = list(config.stage_ratios or config.ratios)
        if config.per_stage and not stages:
            raise InputError("the search space has per_stage: true but the model has no prunable stage")
        from edgeprune.pruning.importance import get_criterion

        for c in config.criteria:
            get_criterion(c, 0)  # unknown names fail here, before any trial

    def distributions(self) -> dict:
        """Optuna parameter name -> list of choices (the grid)."""
        d: dict[str, list] = {}
        if self.config.per_stage:
            for stage in self.stages:
                d[PARAM_STAGE + stage.name] = list(self.stage_ratios)
        else:
            d["ratio"] = list(self.config.ratios)
        d["criterion"] = list(self.config.criteria)
        d["round_to"] = list(self.round_to)
        d["quantization"] = list(self.quantizations)
        d["finetune_epochs"] = list(self.finetune_epochs)
        d["distill"] = [bool(b) for b in self.config.distill]
        return d

    @property
    def size(self) -> int:
        n = 1
        for values in self.distributions().values():
            n *= len(values)
        return n

    def suggest(self, trial) -> Choice:
        params = {name: trial.suggest_categorical(name, values) for name, values in self.distributions().items()}
        return decode(params)

    def to_dict(self) -> dict:
        return {"distributions": self.distributions(), "stages": [s.to_dict() for s in self.stages]}


def decode(params: dict) -> Choice:
    """A Choice from a trial's params (also used by ``compile --from-study``)."""
    stage_ratios = {k[len(PARAM_STAGE):]: float(v) for k, v in params.items() if k.startswith(PARAM_STAGE)}
    return Choice(
        ratio=None if stage_ratios else float(params.get("ratio", 0.0)),
        stage_ratios=stage_ratios,
        criterion=str(params.get("criterion", "l1")),
        round_to=int(params.get("round_to", 1)),
        quantization=str(params["quantization"]),
        finetune_epochs=int(params.get("finetune_epochs", 0)),
        distill=bool(params.get("distill", False)),
    )
