"""Training settings (``TrainingOptions``) and the Click decorator that exposes them as flags.

Precedence: built-in defaults < ``--recipe`` YAML file (``load_recipe``: the training flags written
down once, checked strictly) < flags given on the command line.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import click
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeprune.base.errors import InputError
from edgeprune.training.schedules import LR_SCHEDULES, ONE_CYCLE_WARMUP, rewind_problem


class TrainingOptions(BaseModel):
    """Everything the training stage needs to know; also the schema of a recipe file."""

    model_config = ConfigDict(extra="forbid")

    train_data: str | None = None
    val_data: str | None = None
    val_split: float = Field(default=0.2, gt=0.0, lt=1.0)
    finetune_epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float | None = Field(default=None, gt=0.0)  # None: finetune.RECOVERY_LEARNING_RATE etc.
    lr_schedule: Literal[LR_SCHEDULES] = "cosine"
    lr_warmup: float = Field(default=ONE_CYCLE_WARMUP, ge=0.0, lt=1.0)  # one-cycle only
    original_epochs: int | None = Field(default=None, ge=1)  # rewind only
    patience: int = Field(default=3, ge=1)
    bn_recalibrate: bool = True
    distill: bool = False
    distill_temperature: float = Field(default=4.0, gt=0.0)
    distill_alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    distill_schedule: Literal["constant", "anneal"] = "constant"
    distill_alpha_end: float | None = Field(default=None, ge=0.0, le=1.0)  # anneal only; None: alpha stays
    iterative_steps: int = Field(default=1, ge=1)
    sparsity_epochs: int = Field(default=0, ge=0)
    prune_at_epoch: int = Field(default=0, ge=0)
    sparsity_method: Literal["group-norm", "bn-l1"] = "group-norm"
    sparsity_strength: float = Field(default=1.0, gt=0.0)
    sparsity_growth: Literal["linear", "constant"] = "linear"
    qat: bool = False
    qat_epochs: int | None = Field(default=None, ge=1)
    gradual_sparsity: float | None = Field(default=None, gt=0.0, lt=1.0)
    sparsity_schedule: Literal["constant", "polynomial"] = "polynomial"
    per_layer_sparsity: dict[str, float] = Field(default_factory=dict)
    sparsity_m_by_n: tuple[int, int] | None = None
    max_accuracy_drop: float | None = Field(default=None, ge=0.0)
    gate_data: str | None = None
    gate_split: float = Field(default=0.5, gt=0.0, lt=1.0)
    gate_mode: Literal["point", "upper"] = "point"
    gate_output: str | None = None
    seed: int = 0

    @field_validator("sparsity_m_by_n", mode="before")
    @classmethod
    def _parse_m_by_n(cls, value):
        if value is None or isinstance(value, (tuple, list)):
            return value
        return parse_m_by_n(str(value))

    @field_validator("per_layer_sparsity")
    @classmethod
    def _check_per_layer(cls, value):
        for name, s in value.items():
            if not 0.0 <= s < 1.0:
                raise ValueError(f"sparsity for layer '{name}' must be in [0, 1), got {s}")
        return value

    @model_validator(mode="after")
    def _m_by_n_valid(self):
        if self.sparsity_m_by_n is not None:
            m, n = self.sparsity_m_by_n
            if not 0 < m < n:
                raise ValueError(f"sparsity_m_by_n must be M:N with 0 < M < N, got {m}:{n}")
        return self

    @model_validator(mode="after")
    def _rewind_fits(self):
        """Rewinding replays the end of the original training, so it cannot be longer than it;
        checked here, before any training, for each phase that uses the schedule."""
        if self.lr_schedule == "rewind":
            for flag, epochs in (("--finetune-epochs", self.finetune_epochs), ("--sparsity-epochs", self.sparsity_epochs)):
                problem = rewind_problem(self.original_epochs, epochs, flag)
                if problem:
                    raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _prune_at_epoch_alone(self):
        """Pruning early in training cuts a model that is still learning, on one cosine schedule
        over both phases: the options that assume a trained model, or another schedule or cut,
        cannot join it."""
        if self.prune_at_epoch <= 0:
            return self
        clashes = [flag for flag, on in (("--distill (the model is not trained at the cut, so it cannot teach)",
                                          self.distill),
                                         ("--sparsity-epochs", self.sparsity_epochs > 0),
                                         ("--iterative-steps", self.iterative_steps > 1),
                                         (f"--lr-schedule {self.lr_schedule} (both phases share one cosine)",
                                          self.lr_schedule != "cosine"),
                                         ("--finetune-epochs 0 (the training after the cut)",
                                          self.finetune_epochs <= 0)) if on]
        if clashes:
            raise ValueError(f"--prune-at-epoch cannot be combined with {clashes[0]}")
        return self

    @property
    def wants_sparsity(self) -> bool:
        return bool(self.gradual_sparsity or self.per_layer_sparsity or self.sparsity_m_by_n)

    @property
    def prunes_in_training(self) -> bool:
        """The training stage does the pruning itself: in steps, after a sparsity phase, or after
        the epochs of training before the cut (--prune-at-epoch)."""
        return self.iterative_steps > 1 or self.sparsity_epochs > 0 or self.prune_at_epoch > 0

    @property
    def wants_training(self) -> bool:
        """True when the stage has anything to do beyond the accuracy gate."""
        return bool(
            self.train_data or self.distill or self.qat or self.wants_sparsity or self.prunes_in_training
        )


def parse_m_by_n(text: str) -> tuple[int, int]:
    """'2:4' -> (2, 4)."""
    try:
        m, n = (int(part) for part in text.split(":"))
    except ValueError:
        raise InputError(f"--sparsity-m-by-n: expected M:N such as 2:4, found '{text}'") from None
    return m, n


def parse_layer_sparsity(items) -> dict[str, float]:
    """('conv1=0.5', 'dense=0.8') -> {'conv1': 0.5, 'dense': 0.8}."""
    result = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            result[name] = float(value)
        except ValueError:
            raise InputError(f"--per-layer-sparsity: expected NAME=S such as conv1=0.5, found '{item}'") from None
    return result


# (flag declaration, option field) for every training flag; defaults are None so that a flag
# the user did not type never overrides the recipe.
_FLAGS = [
    (click.option("--train-data", metavar="SRC", help="Training data: .npz (x, y), class-folder image dir, or module:function [none: no training]."), "train_data"),
    (click.option("--val-data", metavar="SRC", help="Validation data (same forms as --train-data) [none: --val-split of --train-data]."), "val_data"),
    (click.option("--val-split", type=float, metavar="FRACTION", help="Fraction (0-1) of --train-data held out for validation when no --val-data [0.2]."), "val_split"),
    (click.option("--finetune-epochs", type=int, metavar="N", help="Recovery (fine-tuning or distillation) epochs after pruning; 0 disables [10]."), "finetune_epochs"),
    (click.option("--batch-size", type=int, metavar="N", help="Training batch size, in samples [32]."), "batch_size"),
    (click.option("--learning-rate", type=float, metavar="LR", help="Adam (peak) learning rate, shaped over the steps by --lr-schedule [3e-3 for recovery (fine-tuning, distillation, --sparsity-epochs); 1e-3 for --qat and --gradual-sparsity]."), "learning_rate"),
    (click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), help="Learning rate over the training steps: cosine (decay to 5% of --learning-rate), plateau (halve when validation stalls), one-cycle (linear warm-up over --lr-warmup, then cosine to 0), constant, or rewind (replay the last --finetune-epochs of an --original-epochs cosine training from --learning-rate) [cosine]."), "lr_schedule"),
    (click.option("--lr-warmup", type=float, metavar="FRACTION", help=f"one-cycle: fraction (0-1) of the training steps spent rising linearly from 1/25 of --learning-rate to it [{ONE_CYCLE_WARMUP}]."), "lr_warmup"),
    (click.option("--original-epochs", type=int, metavar="E", help="rewind: epochs the dense model was trained, with a cosine decay from --learning-rate to 0; at least --finetune-epochs [none: required by rewind]."), "original_epochs"),
    (click.option("--bn-recalibrate/--no-bn-recalibrate", default=None, help="Re-estimate BatchNorm statistics after pruning on up to 1024 training or calibration inputs [on]."), "bn_recalibrate"),
    (click.option("--distill/--no-distill", default=None, help="Distil from the unpruned model while fine-tuning [off]."), "distill"),
    (click.option("--distill-temperature", type=float, metavar="T", help="Distillation softmax temperature (> 0, unitless) [4]."), "distill_temperature"),
    (click.option("--distill-alpha", type=float, metavar="A", help="Weight (0-1) of the hard-label loss; 1-A weighs the teacher term [0.5]."), "distill_alpha"),
    (click.option("--distill-schedule", type=click.Choice(["constant", "anneal"]), help="constant keeps --distill-temperature and --distill-alpha; anneal moves them linearly, epoch by epoch, to a temperature of 1 and --distill-alpha-end at the last epoch [constant]."), "distill_schedule"),
    (click.option("--distill-alpha-end", type=float, metavar="A", help="anneal: weight (0-1) of the hard-label loss in the last epoch [--distill-alpha: alpha stays]."), "distill_alpha_end"),
    (click.option("--iterative-steps", type=int, metavar="N", help="Prune in N steps with fine-tuning between them [1 = one-shot]."), "iterative_steps"),
    (click.option("--sparsity-epochs", type=int, metavar="N", help="Pruning during training: train N epochs with a structured-sparsity penalty before the cut, then prune by the learnt group norms with global ranking [0 = off]."), "sparsity_epochs"),
    (click.option("--prune-at-epoch", type=int, metavar="K", help="Pruning early in training, for a model not yet (fully) trained: train it K epochs on --train-data, cut, and train the pruned model --finetune-epochs more; one cosine schedule from --learning-rate spans all K + N epochs [0 = off: the model is trained, cut it first]."), "prune_at_epoch"),
    (click.option("--sparsity-method", type=click.Choice(["group-norm", "bn-l1"]), help="Penalty of --sparsity-epochs: every unit's coupled weights as one group (group-norm) or BatchNorm scales only (bn-l1) [group-norm]."), "sparsity_method"),
    (click.option("--sparsity-strength", type=float, metavar="S", help="Shrinkage of --sparsity-epochs per step, in units of the learning rate times each group's starting mean norm [1.0]."), "sparsity_strength"),
    (click.option("--sparsity-growth", type=click.Choice(["linear", "constant"]), help="Ramp the --sparsity-strength up from 0 over the phase (linear) or apply it throughout (constant) [linear]."), "sparsity_growth"),
    (click.option("--qat/--no-qat", default=None, help="Quantization-aware training (int8) before conversion [off]."), "qat"),
    (click.option("--gradual-sparsity", type=float, metavar="S", help="Gradual magnitude pruning (tfmot) to this weight sparsity, the fraction (0-1) of weights set to zero [off]."), "gradual_sparsity"),
    (click.option("--sparsity-schedule", type=click.Choice(["constant", "polynomial"]), help="Schedule for --gradual-sparsity [polynomial]."), "sparsity_schedule"),
    (click.option("--per-layer-sparsity", multiple=True, metavar="NAME=S", help="Weight sparsity (fraction 0-1) for one layer (repeatable); other layers use --gradual-sparsity [none]."), "per_layer_sparsity"),
    (click.option("--sparsity-m-by-n", metavar="M:N", help="Structured M:N weight sparsity, e.g. 2:4 (tfmot) [off]."), "sparsity_m_by_n"),
    (click.option("--max-accuracy-drop", type=float, metavar="POINTS", help="Refuse the artifact if accuracy drops more than this many percentage points [none: no gate]."), "max_accuracy_drop"),
    (click.option("--gate-data", metavar="SRC", help="Labelled data the accuracy gate measures on (never used to select) [--gate-split of the validation data]."), "gate_data"),
    (click.option("--gate-split", type=float, metavar="FRACTION", help="Fraction (0-1) of the validation data held out for the gate before early stopping and distillation select on the rest [0.5]."), "gate_split"),
    (click.option("--gate-mode", type=click.Choice(["point", "upper"]), help="Gate on the measured drop (point) or on the upper end of its 95% CI (upper) [point]."), "gate_mode"),
    (click.option("--gate-output", metavar="NAME", help="For a model with several outputs: the output the accuracy gate measures [the first classification output]."), "gate_output"),
    (click.option("--recipe", type=click.Path(dir_okay=False), help="YAML file with any of these settings (same names); flags override it [none]."), "recipe"),
]
FLAG_FIELDS = [field for _, field in _FLAGS]


def training_options(func):
    """Add every training flag to a Click command; the command receives ``training: TrainingOptions``."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        given = {}
        recipe = None
        for field in FLAG_FIELDS:
            value = kwargs.pop(field, None)
            if field == "recipe":
                recipe = value
                continue
            source = ctx.get_parameter_source(field)
            if value is None or (field == "per_layer_sparsity" and not value):
                continue
            if source is not None and source.name != "COMMANDLINE" and source.name != "ENVIRONMENT":
                continue
            given[field] = value
        kwargs["training"] = merge_options(recipe, given)
        return func(*args, **kwargs)

    for option, _ in reversed(_FLAGS):
        wrapper = option(wrapper)
    return wrapper


def merge_options(recipe_path: str | None, flags: dict) -> TrainingOptions:
    """Defaults, then the recipe file, then the flags; invalid values -> InputError."""
    values: dict = load_recipe(recipe_path) if recipe_path else {}
    flags = dict(flags)
    if "per_layer_sparsity" in flags and not isinstance(flags["per_layer_sparsity"], dict):
        flags["per_layer_sparsity"] = parse_layer_sparsity(flags["per_layer_sparsity"])
    if isinstance(flags.get("sparsity_m_by_n"), str):
        flags["sparsity_m_by_n"] = parse_m_by_n(flags["sparsity_m_by_n"])
    values.update(flags)
    return build_options(values, origin=recipe_path)


def build_options(values: dict, origin: str | None = None) -> TrainingOptions:
    """Validate a settings dict into TrainingOptions with one-line errors naming the setting."""
    from pydantic import ValidationError

    try:
        return TrainingOptions(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        where = f" (from recipe {origin} or flags)" if origin else ""
        if not key:  # a rule over several settings: its message names them, the input is everything
            message = str(err["msg"]).removeprefix("Value error, ")
            raise InputError(f"training settings{where}: {message}") from None
        raise InputError(f"training setting '{key}'{where}: {err['msg']}, found {err.get('input')!r}") from None


def load_recipe(path: str | Path) -> dict:
    """Read a recipe into a settings dict; unknown keys or bad YAML -> InputError naming the file.

    Keys are the flag names with dashes or underscores (``finetune-epochs`` or
    ``finetune_epochs``); a top-level ``training:`` mapping is also accepted.
    """
    from edgeprune.base.yamlfile import read_yaml

    path = Path(path)
    data = read_yaml(path, f"--recipe {path}")
    if data is None:
        return {}
    if isinstance(data, dict) and set(data) == {"training"}:
        data = data["training"]
    if not isinstance(data, dict):
        raise InputError(f"--recipe {path}: expected a mapping of settings, found {type(data).__name__}")
    known = set(TrainingOptions.model_fields)
    values = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise InputError(
                f"--recipe {path}: unknown key '{raw_key}' (known: {', '.join(sorted(k.replace('_', '-') for k in known))})"
            )
        if key == "sparsity_m_by_n" and value is not None and not isinstance(value, (list, tuple)):
            value = parse_m_by_n(str(value))
        values[key] = value
    return values
