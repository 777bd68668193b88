"""Artifact directories that appear whole or not at all, and the files inside them.

Everything is built in a hidden temp dir beside the destination and renamed into place at
the end, so a failure or Ctrl-C never leaves a half-written output directory behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeprune.console import json_default
from edgeprune.errors import InputError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json_object(path: Path) -> dict:
    """A JSON object from ``path`` (manifest, report): InputError naming the file otherwise."""
    import json

    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a JSON object")
    return value


def write_json(path: Path, payload: Any) -> Path:
    text = json.dumps(payload, indent=2, sort_keys=False, default=json_default) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def rejected_path(dest: Path) -> Path:
    """Where a candidate that failed a check is kept for inspection: ``DIR.rejected``."""
    return dest.with_name(dest.name + ".rejected")


class ArtifactDir:
    """``with ArtifactDir(dest, force) as tmp:`` fill ``tmp``; it becomes ``dest`` on success.

    On an exception (including KeyboardInterrupt) the temp dir is removed, unless
    :meth:`reject` moved it to ``DIR.rejected`` first.
    """

    def __init__(self, dest: str | Path, *, force: bool = False):
        self.dest = Path(dest)
        self.force = force
        self.tmp: Path | None = None
        self.check_destination()

    def check_destination(self) -> None:
        if self.dest.exists() and not self.force:
            raise InputError(f"-o {self.dest}: already exists (pass --force to replace it)")
        if self.dest.exists() and not self.dest.is_dir():
            raise InputError(f"-o {self.dest}: exists and is not a directory")

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", suffix=".tmp", dir=self.dest.parent))
        return self.tmp

    def reject(self) -> Path:
        """Keep the current candidate as ``DIR.rejected`` (replacing an older one)."""
        target = rejected_path(self.dest)
        if target.exists():
            shutil.rmtree(target)
        os.replace(self.tmp, target)
        self.tmp = None
        return target

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.tmp is None:
            return False
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        self.check_destination()
        old = None
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old-{os.getpid()}")
            os.replace(self.dest, old)
        try:
            os.replace(self.tmp, self.dest)
        except BaseException:
            if old is not None:
                os.replace(old, self.dest)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.tmp = None
        return False


def path_bytes(path: Path) -> int:
    """Size of a file, or of all files under a directory (SavedModel)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
