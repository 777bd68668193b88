"""Ship an artifact directory as one ``.tar.gz`` and unpack it safely on arrival.

``pack`` takes only the files an artifact is made of (model, manifest, labels, reports and
their images, the reference sample), with normalised owners, modes and times. ``unpack``
treats the archive as hostile: every member is checked before anything is written (no
absolute paths, no ``..``, no links, no device files or FIFOs, no duplicates, only regular
files and folders), then the files are copied out by hand (never ``tarfile.extract``) into a
temp directory that becomes ``DIR`` atomically (edgeprune.artifacts.ArtifactDir). A refused
archive exits 2 and leaves nothing behind.
"""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path, PurePosixPath

from edgeprune.artifacts import ArtifactDir, write_bytes_atomic
from edgeprune.errors import InputError
from edgeprune.report import ASSETS as REPORT_ASSETS  # report_files/

# What a bundle carries: fixed names, plus everything under the report's image folder.
BUNDLE_FILES = ("model.tflite", "manifest.json", "labels.txt", "report.json", "report.html", "report.md",
                "reference_sample.npz")
MAX_MEMBER_BYTES = 4 << 30


def _members(src: Path) -> list[tuple[str, Path]]:
    found = [(name, src / name) for name in BUNDLE_FILES if (src / name).is_file()]
    assets = src / REPORT_ASSETS
    if assets.is_dir():
        found += [(f"{REPORT_ASSETS}/{p.name}", p) for p in sorted(assets.iterdir()) if p.is_file()
                  and not p.is_symlink()]
    return found


def pack(directory, output, *, force: bool = False) -> dict:
    """Write ``output`` (.tar.gz) from an artifact directory; returns the list of files and bytes."""
    src = Path(directory)
    if not src.is_dir():
        raise InputError(f"{src}: not an artifact directory")
    if not (src / "model.tflite").is_file() or not (src / "manifest.json").is_file():
        raise InputError(f"{src}: not an artifact directory (model.tflite and manifest.json expected)")
    out = Path(output)
    if out.exists() and not force:
        raise InputError(f"-o {out}: already exists (pass --force to replace it)")
    members = _members(src)
    for _name, path in members:
        if path.is_symlink():
            raise InputError(f"{path}: is a symbolic link; a bundle carries regular files only")
    buffer = io.BytesIO()
    # mtime 0 and fixed owners: the same directory packs to the same archive contents.
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, path in members:
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    write_bytes_atomic(out, buffer.getvalue())
    return {"bundle": str(out), "bytes": len(buffer.getvalue()), "files": [n for n, _ in members]}


def _check_member(m: tarfile.TarInfo, where: str) -> str:
    """The member's safe relative path, or InputError naming it and why."""
    name = m.name
    if m.issym() or m.islnk():
        raise InputError(f"{where}: member '{name}' is a link (refused)")
    if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
        raise InputError(f"{where}: member '{name}' is a device file or FIFO (refused)")
    if not (m.isfile() or m.isdir()):
        raise InputError(f"{where}: member '{name}' is not a regular file or folder (refused)")
    if "\\" in name or "\x00" in name:
        raise InputError(f"{where}: member '{name}' has a backslash or NUL in its name (refused)")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise InputError(f"{where}: member '{name}' has an absolute path (refused)")
    if any(part == ".." for part in path.parts):
        raise InputError(f"{where}: member '{name}' escapes the output folder with '..' (refused)")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise InputError(f"{where}: member '{name}' has an empty path (refused)")
    if m.isfile() and m.size > MAX_MEMBER_BYTES:
        raise InputError(f"{where}: member '{name}' is {m.size} bytes, larger than a bundle file can be")
    return "/".join(parts)


def read_members(bundle) -> list[tuple[str, bytes | None]]:
    """Check every member of ``bundle`` and return (relative path, data or None for a folder)."""
    src = Path(bundle)
    if not src.is_file():
        raise InputError(f"{src}: bundle not found")
    try:
        tar = tarfile.open(src, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputError(f"{src}: not a readable tar archive ({exc})") from None
    out: list[tuple[str, bytes | None]] = []
    seen: set[str] = set()
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise InputError(f"{src}: corrupt archive ({exc})") from None
        for m in members:
            rel = _check_member(m, str(src))
            if rel in seen:
                raise InputError(f"{src}: member '{m.name}' appears twice (refused)")
            seen.add(rel)
            if m.isdir():
                out.append((rel, None))
                continue
            fh = tar.extractfile(m)
            try:
                data = fh.read() if fh is not None else b""
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise InputError(f"{src}: member '{m.name}' cannot be read ({exc})") from None
            out.append((rel, data))
    files = {rel for rel, data in out if data is not None}
    for rel in files:  # a file may not also be the parent folder of another member
        parent = rel.rsplit("/", 1)[0] if "/" in rel else None
        if parent in files:
            raise InputError(f"{src}: member '{rel}' lies under the file '{parent}' (refused)")
    if "manifest.json" not in files:
        raise InputError(f"{src}: not an edgeprune bundle (no manifest.json)")
    return out


def unpack(bundle, output, *, force: bool = False) -> dict:
    """Extract a bundle into ``output`` atomically after checking every member."""
    members = read_members(bundle)  # refuses before anything is created
    target = ArtifactDir(output, force=force)
    with target as tmp:
        for rel, data in members:
            dest = tmp.joinpath(*rel.split("/"))
            if data is None:
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
    return {"output_dir": str(Path(output)), "files": [rel for rel, data in members if data is not None]}
