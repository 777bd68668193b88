"""Device profiles: what a target is, what it accepts, what it must fit, how to reach it.

Profiles are YAML files validated by a Pydantic schema. The bundled ones live in the
top-level ``targets/`` directory (shipped inside the package as ``edgeprune/data/targets``);
a user can pass the path of their own file anywhere a profile name is accepted.
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeprune.base.errors import InputError
from edgeprune.base.yamlfile import read_yaml

QUANT_MODES = ("float32", "dynamic", "float16", "int8", "int16x8")


class Quantization(str, Enum):
    float32 = "float32"
    dynamic = "dynamic"
    float16 = "float16"
    int8 = "int8"
    int16x8 = "int16x8"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantizationPolicy(_Strict):
    """Which quantization modes the device accepts and which one is used by default."""

    default: Quantization = Quantization.float32
    allowed: list[Quantization] = Field(default_factory=lambda: list(Quantization))
    io: Literal["float", "int8", "uint8"] = "float"

    @model_validator(mode="after")
    def _default_is_allowed(self):
        if self.default not in self.allowed:
            raise ValueError(f"default '{self.default.value}' is not in allowed")
        return self


class Operators(_Strict):
    """Operator constraints the converted graph must respect."""

    int8_only: bool = False  # every op must be an int8 builtin (microcontrollers, NPUs)
    select_tf_ops: bool = False  # allow TF ops (Flex): needs the Flex delegate on device
    runtime: Literal["litert", "tflm"] = "litert"


class Budgets(_Strict):
    """Limits the artifact must meet; ``None`` means unchecked."""

    max_model_bytes: int | None = Field(default=None, gt=0)
    max_arena_bytes: int | None = Field(default=None, gt=0)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_accuracy_drop: float | None = Field(default=None, ge=0)  # percentage points


class PruningPolicy(_Strict):
    """How channel counts should be shaped for this device's kernels."""

    round_to: int = Field(default=1, ge=1)  # keep channel counts a multiple of this (SIMD)
    min_channels: int = Field(default=1, ge=1)


class Connection(_Strict):
    """How to reach the device for benchmarking."""

    kind: Literal["local", "ssh", "emulated"] = "local"
    host: str | None = None  # an SSH host alias from ~/.ssh/config, or user@host[:port]
    python: str = "python3"
    # emulated: the system `edgeprune targets emulate NAME` prepared; reached over ssh to an
    # sshd started inside it for each run (latency there is emulated and never gated)
    system: str | None = None

    @model_validator(mode="after")
    def _ssh_needs_host(self):
        if self.kind == "ssh" and not self.host:
            raise ValueError("an ssh connection needs 'host'")
        if self.kind == "emulated" and not self.system:
            raise ValueError("an emulated connection needs 'system' (e.g. rpi4)")
        return self


class Preprocessing(_Strict):
    """How images become model input when calibration or eval data is an image folder."""

    scale: tuple[float, float] = (0.0, 1.0)  # pixel range [0,255] maps linearly onto this
    color: Literal["rgb", "grayscale"] = "rgb"


class Profile(_Strict):
    """A named edge device."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str
    cpu: str
    arch: Literal["x86_64", "aarch64", "armv7l", "armv7e-m"]
    cores: int = Field(ge=1)
    threads: int = Field(default=1, ge=1)
    quantization: QuantizationPolicy = QuantizationPolicy()
    operators: Operators = Operators()
    budgets: Budgets = Budgets()
    pruning: PruningPolicy = PruningPolicy()
    connection: Connection = Connection()
    preprocessing: Preprocessing = Preprocessing()

    @model_validator(mode="after")
    def _int8_only_is_consistent(self):
        if self.operators.int8_only:
            bad = [q.value for q in self.quantization.allowed if q is not Quantization.int8]
            if bad:
                raise ValueError(f"operators.int8_only allows only int8, not {', '.join(bad)}")
        return self

    @property
    def emulated(self) -> bool:
        """Reached by emulation: its latency means nothing and is never gated or searched on."""
        return self.connection.kind == "emulated"

    def check_quantization(self, mode: str) -> str:
        """Return ``mode`` if the device accepts it, else raise a clear InputError."""
        allowed = [q.value for q in self.quantization.allowed]
        if mode not in QUANT_MODES:
            raise InputError(f"unknown quantization '{mode}' (choose from {', '.join(QUANT_MODES)})")
        if mode not in allowed:
            raise InputError(
                f"profile '{self.name}' does not accept quantization '{mode}' "
                f"(allowed: {', '.join(allowed)})"
            )
        return mode


def _targets_dir() -> Path:
    from edgeprune.base.resources import bundled_dir

    return bundled_dir("targets")


def list_profiles() -> list[Profile]:
    """All bundled profiles, sorted by name."""
    return [load_profile(p) for p in sorted(_targets_dir().glob("*.yaml"))]


def _format_loc(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a bundled profile by name, or a user's YAML file by path.

    Raises InputError naming the file and the offending field path.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = _targets_dir() / f"{name_or_path}.yaml"
        if not path.exists():
            names = ", ".join(p.stem for p in sorted(_targets_dir().glob("*.yaml")))
            raise InputError(f"unknown target '{name_or_path}' (bundled: {names}; or pass a YAML path)")
    if not path.is_file():
        raise InputError(f"{path}: profile file not found")
    data = read_yaml(path, str(path))
    if not isinstance(data, dict):
        raise InputError(f"{path}: a profile must be a YAML mapping")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InputError(f"{path}: {_format_loc(err['loc'])}: {err['msg']}{more}") from None
