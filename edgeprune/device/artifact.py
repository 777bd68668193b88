"""Check a .tflite artifact on the compile machine before anything is sent to a device.

Catches the common mistakes early (wrong path, not a TFLite file, a file that no longer
matches the manifest written beside it) and reads the input/output tensors so eval data can
be checked against them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeprune.base.errors import InputError, VerificationError

TFLITE_IDENTIFIER = b"TFL3"
MANIFEST = "manifest.json"
# Manifest keys worth carrying into the bench result (quantization and profile facts).
MANIFEST_KEYS = ("profile", "target", "quantization", "io", "int8_only", "source", "model",
                 "created", "edgeprune_version", "budgets", "sizes", "macs", "keras_outputs",
                 "input_range")


@dataclass
class ArtifactInfo:
    """What the controller knows about the artifact it is about to benchmark."""

    path: Path
    sha256: str
    size: int
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)
    manifest: dict | None = None

    def as_dict(self) -> dict:
        return {"path": str(self.path), "name": self.path.name, "bytes": self.size,
                "sha256": self.sha256, "inputs": self.inputs, "outputs": self.outputs,
                "manifest": self.manifest}


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_artifact(path: str | Path) -> Path:
    """The .tflite file: ``path`` itself, or the single .tflite inside an artifact directory."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.tflite"))
        if len(found) != 1:
            raise InputError(f"{p}: expected one .tflite file in the artifact directory, found {len(found)}")
        return found[0]
    if not p.exists():
        raise InputError(f"{p}: artifact not found")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file")
    return p


def _tensor_summary(detail: dict) -> dict:
    scale, zero = detail.get("quantization", (0.0, 0))
    return {
        "name": detail.get("name"),
        "shape": [int(d) for d in detail["shape"]],
        "shape_signature": [int(d) for d in detail.get("shape_signature", detail["shape"])],
        "dtype": str(getattr(detail["dtype"], "__name__", detail["dtype"])),
        "scale": float(scale),
        "zero_point": int(zero),
    }


def read_tensors(data: bytes, name: str) -> tuple[list[dict], list[dict]]:
    """Input and output tensor summaries, read with the local LiteRT interpreter (in this process:
    ``data`` has passed edgeprune.device.tflite_check)."""
    from edgeprune.device import runner

    try:
        _, _, cls = runner.find_runtime()
    except runner.RunnerFailure as exc:  # pragma: no cover - ai-edge-litert is a dependency
        raise InputError(f"cannot inspect {name}: {exc.message}") from None
    try:
        interpreter = cls(model_content=data)
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: the TFLite runtime cannot load it ({first})") from None
    ins, outs = runner.signature_io(interpreter)  # named as the Keras model named them
    return ([dict(_tensor_summary(d), key=k) for k, d in ins], [dict(_tensor_summary(d), key=k) for k, d in outs])


def _sha_entries(node: Any, found: list[tuple[str | None, str]], key_name: str | None = None) -> None:
    """Collect (file name or None, sha256) pairs from any manifest layout."""
    if isinstance(node, dict):
        sha = node.get("sha256")
        if isinstance(sha, str):
            name = next((node[k] for k in ("file", "path", "name", "filename") if isinstance(node.get(k), str)),
                        key_name)
            found.append((Path(name).name if name else None, sha.lower()))
        for key, value in node.items():
            if key == "sha256":
                continue
            if isinstance(value, str) and key.endswith(".tflite") and len(value) == 64:
                found.append((key, value.lower()))
            else:
                _sha_entries(value, found, key if isinstance(value, dict) else None)
    elif isinstance(node, list):
        for item in node:
            _sha_entries(item, found)


def check_manifest(path: Path, sha: str) -> dict | None:
    """Compare the artifact with a manifest.json beside it; return its quantization/profile facts."""
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        return None
    from edgeprune.base.artifacts import read_json_object

    manifest = read_json_object(manifest_path)
    entries: list[tuple[str | None, str]] = []
    _sha_entries(manifest, entries)
    named = [s for n, s in entries if n == path.name]
    candidates = named or [s for n, s in entries if n is None or n.endswith(".tflite")]
    facts = {k: manifest[k] for k in MANIFEST_KEYS if k in manifest}
    facts["path"] = str(manifest_path)
    if not candidates:
        facts["sha256_checked"] = False
        return facts
    if sha not in candidates:
        raise VerificationError(
            f"{path}: sha256 {sha[:16]}… does not match {manifest_path.name} ({candidates[0][:16]}…): "
            "the file changed after it was compiled"
        )
    facts["sha256_checked"] = True
    return facts


def inspect_artifact(path: str | Path) -> ArtifactInfo:
    """Validate the artifact and describe it (sha256, tensors, manifest facts).

    The tensors are read by the interpreter in this process, so the file passes
    edgeprune.device.tflite_check first (a malformed file is one error line, not a crash).
    """
    from edgeprune.device.tflite_check import check_untrusted_tflite

    p = resolve_artifact(path)
    data = p.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise InputError(f"{p}: not a TFLite model (expected the 'TFL3' flatbuffer identifier)")
    sha = sha256_of(data)
    manifest = check_manifest(p, sha)
    check_untrusted_tflite(data, str(p))
    inputs, outputs = read_tensors(data, str(p))
    names = (manifest or {}).get("keras_outputs")
    if names:  # Keras 3 artifacts name their outputs output_0, ...: use the model's names
        from edgeprune.device.verify import align

        renamed = align({t["key"]: t for t in outputs}, names)
        outputs = [dict(t, key=k) for k, t in renamed.items()]
    return ArtifactInfo(path=p.resolve(), sha256=sha, size=len(data), inputs=inputs, outputs=outputs,
                        manifest=manifest)
