"""Ship an artifact directory as one ``.tar.gz`` and unpack it safely on arrival.

``pack`` takes only the files an artifact is made of (model, manifest, labels, reports and
their images, the reference sample), with normalised owners, modes and times. ``unpack``
treats the archive as hostile: every member is checked before anything is written (no
absolute paths, no ``..``, no links, no device files or FIFOs, no duplicates, only regular
files and folders), then the files are copied out by hand (never ``tarfile.extract``) into a
temp directory that becomes ``DIR`` atomically (edgeprune.base.artifacts.ArtifactDir). Declared
sizes, the member count and the total are bounded (edgeprune.base.limits) and checked header by
header, so a compression bomb is refused before it is inflated. A refused archive exits 2 and
leaves nothing behind.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from edgeprune.base import limits
from edgeprune.base.artifacts import ArtifactDir, write_bytes_atomic
from edgeprune.base.errors import InputError, output_error
from edgeprune.ship.report import ASSETS as REPORT_ASSETS  # report_files/

# What a bundle carries: fixed names, plus everything under the report's image folder.
BUNDLE_FILES = ("model.tflite", "manifest.json", "labels.txt", "report.json", "report.html", "report.md",
                "reference_sample.npz", "pruned.keras", "pruned.h5")  # pruned.*: stages.PRUNED_MODEL
# Compressed tar formats by magic bytes; anything else is read as a plain tar.
_COMPRESSED = ((b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")), (b"BZh", bz2.BZ2File),
               (b"\xfd7zXZ\x00", lzma.LZMAFile))


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
    try:
        write_bytes_atomic(out, buffer.getvalue())
    except OSError as exc:
        raise (output_error(exc, f"-o {out}") or exc) from None
    return {"bundle": str(out), "bytes": len(buffer.getvalue()), "files": [n for n, _ in members]}


def _check_member(m: tarfile.TarInfo, where: str, limit: limits.ResourceLimits) -> str:
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
    if m.isfile():
        limits.check("member_bytes", m.size, f"{where}: member '{name}'", limits=limit)
    return "/".join(parts)


class _Bounded(io.RawIOBase):
    """The decompressed tar stream, refusing any single read over the member limit.

    tarfile reads a pax or GNU long-name header's payload in one read of the size its header
    declares, inside ``next()`` and before we see the member; this is where a small .tar.gz
    declaring a huge header is stopped without allocating it. Member data is read only after
    :func:`_check_member` passed its declared size.
    """

    def __init__(self, stream, limit: limits.ResourceLimits, where: str):
        self.stream, self.limit, self.where = stream, limit, where

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size=-1) -> bytes:
        if size is None or size < 0:
            raise InputError(f"{self.where}: unbounded read refused")
        limits.check("member_bytes", size, f"{self.where}: a tar header", limits=self.limit)
        return self.stream.read(size)

    def seek(self, offset, whence=io.SEEK_SET) -> int:
        return self.stream.seek(offset, whence)

    def tell(self) -> int:
        return self.stream.tell()


def _decompressed(raw):
    """A reader of the uncompressed tar: gzip, bzip2 or xz by magic bytes, else ``raw`` itself."""
    head = raw.read(6)
    raw.seek(0)
    for magic, opener in _COMPRESSED:
        if head.startswith(magic):
            return opener(raw)
    return raw


# What may follow the tar's end-of-archive blocks: tar pads to 10 KiB records; allow far more.
_TRAILER_BYTES = 1 << 20


def _read_to_end(stream, where: str) -> None:
    """Read the compressed stream to its end, so gzip, bzip2 and xz check their CRC.

    tarfile stops at the end-of-archive blocks; without this a bit flipped inside a member's
    compressed data unpacks without a word and only surfaces later as a broken file. Data after
    the archive is bounded, so an archive cannot hide a bomb behind its end either.
    """
    read = 0
    while chunk := stream.read(1 << 16):
        read += len(chunk)
        if read > _TRAILER_BYTES:
            raise InputError(f"{where}: more than {_TRAILER_BYTES:,} bytes after the end of the tar archive "
                             f"(refused)")


def read_members(bundle) -> list[tuple[str, bytes | None]]:
    """Check every member of ``bundle`` and return (relative path, data or None for a folder).

    Members are read one at a time, each header checked (path, type, declared size, running
    count and total) before its data is inflated, so a gzip bomb is refused at its first
    oversized header without allocating it.
    """
    src = Path(bundle)
    if not src.is_file():
        raise InputError(f"{src}: bundle not found")
    where = str(src)
    limit = limits.current()
    out: list[tuple[str, bytes | None]] = []
    seen: set[str] = set()
    total = 0
    try:
        with open(src, "rb") as raw, _decompressed(raw) as stream:
            try:
                tar = tarfile.open(fileobj=_Bounded(stream, limit, where), mode="r:")
            except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
                raise InputError(f"{src}: not a readable tar archive ({exc})") from None
            with tar:
                while (m := tar.next()) is not None:
                    limits.check("archive_members", len(out) + 1, where, what="has at least", limits=limit)
                    rel = _check_member(m, where, limit)
                    if rel in seen:
                        raise InputError(f"{src}: member '{m.name}' appears twice (refused)")
                    seen.add(rel)
                    if m.isdir():
                        out.append((rel, None))
                        continue
                    total += m.size
                    limits.check("archive_bytes", total, f"{where}: members together", what="declare at least",
                                 limits=limit)
                    fh = tar.extractfile(m)
                    data = fh.read() if fh is not None else b""
                    if len(data) != m.size:
                        raise InputError(f"{src}: member '{m.name}' is truncated")
                    out.append((rel, data))
            _read_to_end(stream, where)
    except InputError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise InputError(f"{src}: corrupt archive ({exc})") from None
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
