"""`edgeprune verify`: is this artifact (directory or bundle) the one that was compiled, and does
it still compute what it computed then?

compile stores a small reference sample (``reference_sample.npz``: inputs ``x`` and the outputs
``y`` the artifact produced on them, plain arrays, no pickles) and lists every file's sha256 in
the manifest. verify checks the hashes (edgeprune.device.artifact's manifest reader), loads
the artifact with the LiteRT interpreter, runs the sample and compares within a tolerance of a
couple of output quantization steps (float: 1e-4 relative). Any difference → VerificationError
(exit 1) that says what differs. The artifact may come from anywhere, so it passes
edgeprune.device.tflite_check before the interpreter in this process sees it (InputError, exit 2).
"""
from __future__ import annotations

import io
import json
import tempfile
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from edgeprune.base.artifacts import sha256_bytes
from edgeprune.base.errors import InputError, VerificationError

SAMPLE_FILE = "reference_sample.npz"
SAMPLE_SIZE = 8
# A reference sample is a few kilobytes; a member that declares more is refused unread.
SAMPLE_MAX_BYTES = 256 << 20


def sample_inputs(input_detail: dict, data: np.ndarray | None, *, count: int = SAMPLE_SIZE, seed: int = 0) -> np.ndarray:
    """Float inputs for the sample: the first rows of real data when there are some, else seeded noise."""
    if data is not None and len(data):
        return np.asarray(data[:count], np.float32)
    shape = [int(d) for d in input_detail["shape"]][1:]
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


def tolerance(outputs_meta: list[dict], expected: np.ndarray) -> float:
    """Largest acceptable abs difference: 2 output quantization steps, or 1e-4 of the output range."""
    scale = max((float(o.get("scale") or 0.0) for o in outputs_meta), default=0.0)
    return float(max(2.0 * scale, 1e-4 * max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)))


def make_reference_sample(tflite: bytes, data: np.ndarray | None, outputs_meta: list[dict], input_detail: dict) -> tuple[bytes, dict]:
    """(npz bytes, manifest entry) for the artifact's own outputs on a few inputs."""
    from edgeprune.device.api import evaluate_tflite

    x = sample_inputs(input_detail, data)
    y = np.asarray(evaluate_tflite(tflite, x, trusted=True)["outputs"], np.float32)  # compile's own bytes
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    raw = buffer.getvalue()
    entry = {"file": SAMPLE_FILE, "sha256": sha256_bytes(raw), "count": int(len(x)),
             "source": "data" if data is not None and len(data) else "seeded noise",
             "atol": tolerance(outputs_meta, y)}
    return raw, entry


def _load_sample(path: Path, shown: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the sample: numeric arrays with the same number of rows, or VerificationError.

    The zip directory's sizes are checked before numpy inflates a member (a small file may
    declare gigabytes); numpy's own header errors (tokenize's included) are one line.
    ``shown``: how messages name the file (default: its path).
    """
    from edgeprune.load.datasets import check_npz

    where = shown or str(path)

    try:
        with zipfile.ZipFile(path) as zf:
            big = [i.filename for i in zf.infolist() if i.file_size > SAMPLE_MAX_BYTES]
        if big:
            raise VerificationError(f"{where}: reference sample member '{big[0]}' declares more than "
                                    f"{SAMPLE_MAX_BYTES >> 20} MiB")
        check_npz(path, f"{where}: reference sample")  # each member's npy header, before numpy allocates
        with np.load(path, allow_pickle=False) as npz:
            x, y = np.asarray(npz["x"]), np.asarray(npz["y"])
    except (OSError, ValueError, KeyError, EOFError, MemoryError, NotImplementedError, zipfile.BadZipFile,
            tokenize.TokenError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise VerificationError(f"{where}: unreadable reference sample ({first})") from None
    except InputError as exc:
        raise VerificationError(str(exc)) from None
    for key, a in (("x", x), ("y", y)):
        if a.dtype.kind not in "biuf" or a.ndim < 1:
            raise VerificationError(f"{where}: reference sample '{key}' is not an array of numbers "
                                    f"(dtype {a.dtype}, shape {list(a.shape)})")
    if len(x) != len(y):
        raise VerificationError(f"{where}: reference sample has {len(x)} inputs but {len(y)} outputs")
    return x, y


def _plain_name(value, what: str, manifest_shown: str = "manifest.json") -> str:
    """A file name from manifest.json that stays inside the artifact directory."""
    name = str(value)
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise VerificationError(f"{manifest_shown}: {what} '{name}' is not a file name inside the artifact")
    return name


def _namer(directory: Path, bundle: str | None):
    """How messages name a file of the artifact: its path, or ``BUNDLE: member 'NAME'`` when the
    directory is a bundle's temporary extraction (a folder the user never saw, gone on exit)."""
    if bundle is None:
        return str
    return lambda path: f"{bundle}: member '{Path(path).relative_to(directory).as_posix()}'"


def _check_hashes(directory: Path, manifest: dict, shown=str) -> list[dict]:
    from edgeprune.device.artifact import _sha_entries

    entries: list[tuple[str | None, str]] = []
    # source/calibration hash what compile read, not files of the artifact; report_files carry
    # paths relative to the directory (report_files/x.png), read below.
    _sha_entries({k: v for k, v in manifest.items() if k not in ("source", "calibration", "report_files")}, entries)
    for item in manifest.get("report_files") or []:
        rel = str(item.get("path", ""))
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts:
            raise VerificationError(f"{shown(directory / 'manifest.json')}: report file path '{rel}' is not inside "
                                    "the artifact")
        entries.append((rel, str(item.get("sha256", "")).lower()))
    checked = []
    for name, sha in entries:
        if not name:
            continue
        path = directory / name
        if not path.is_file():
            raise VerificationError(f"{shown(path)}: listed in manifest.json but missing")
        actual = sha256_bytes(path.read_bytes())
        if actual != sha:
            raise VerificationError(f"{shown(path)}: sha256 {actual[:16]}… does not match manifest.json ({sha[:16]}…): "
                                    "the file changed after it was compiled")
        checked.append({"file": name, "sha256": sha, "ok": True})
    return checked


def verify_directory(directory, *, bundle: str | None = None) -> dict:
    """Check hashes, load the artifact and re-run the reference sample. Raises VerificationError.

    ``bundle``: the bundle ``directory`` was unpacked from: every message names the bundle and
    its member (:func:`_namer`), never the temporary folder.
    """
    from edgeprune.device.api import evaluate_tflite
    from edgeprune.device.metrics import agreement
    from edgeprune.device.tflite_check import check_untrusted_tflite

    d = Path(directory)
    shown = _namer(d, bundle)
    manifest_path = d / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{d}: not an artifact directory (no manifest.json)")
    where = shown(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise VerificationError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifact"), dict):
        raise VerificationError(f"{where}: no 'artifact' entry")
    hashes = _check_hashes(d, manifest, shown)
    art = d / _plain_name(manifest["artifact"].get("file", "model.tflite"), "artifact file", where)
    if not any(h["file"] == art.name for h in hashes):
        raise VerificationError(f"{where}: no sha256 for {art.name}")
    result = {"directory": str(d), "artifact": str(art), "hashes": hashes}
    entry = manifest.get("reference_sample")
    if not entry:
        raise VerificationError(f"{where}: no reference sample recorded (compiled by an older edgeprune?)")
    if not isinstance(entry, dict):
        raise VerificationError(f"{where}: 'reference_sample' is not an object")
    check_untrusted_tflite(art, shown(art))  # before our interpreter
    if entry.get("skipped"):  # several inputs/outputs: no x/y sample, the hashes were checked
        result.update(sample={"skipped": entry["skipped"]}, ok=True)
        return result
    sample = d / _plain_name(entry.get("file", SAMPLE_FILE), "reference sample", where)
    x, expected = _load_sample(sample, shown(sample))
    try:
        actual = np.asarray(evaluate_tflite(art, x, trusted=True)["outputs"], np.float32)
    except InputError as exc:
        raise VerificationError(f"{shown(art)}: the artifact cannot run its reference sample ({exc})") from None
    if actual.shape != expected.shape:
        raise VerificationError(f"{shown(art)}: outputs have shape {list(actual.shape)}, the reference sample "
                                f"recorded {list(expected.shape)}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    try:
        atol = float(entry.get("atol", 1e-4))
    except (TypeError, ValueError):
        raise VerificationError(f"{where}: reference sample 'atol' is not a number") from None
    agree = agreement(actual, expected)
    result["sample"] = {"count": int(len(x)), "max_abs_diff": float(diff.max()) if diff.size else 0.0,
                        "atol": atol, "top1_agreement": agree.get("top1_agreement")}
    if diff.size and diff.max() > atol:
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
        raise VerificationError(
            f"{shown(art)}: reference sample differs: max abs difference {diff.max():.6g} > tolerance {atol:.3g} "
            f"(sample {worst[0]}, output index {list(worst[1:])}: got {actual[worst]:.6g}, expected "
            f"{expected[worst]:.6g}; top-1 agreement {agree.get('top1_agreement')})")
    result["ok"] = True
    return result


def verify(path) -> dict:
    """Python API of ``edgeprune verify DIR|BUNDLE``."""
    from edgeprune.ship.bundle import unpack

    p = Path(path)
    if p.is_dir():
        return verify_directory(p)
    if not p.is_file():
        raise InputError(f"{p}: no such artifact directory or bundle")
    with tempfile.TemporaryDirectory(prefix="edgeprune-verify-") as tmp:
        dest = Path(tmp) / "bundle"
        unpack(p, dest)
        result = verify_directory(dest, bundle=str(p))
    result["bundle"] = str(p)
    result["directory"] = None
    return result
