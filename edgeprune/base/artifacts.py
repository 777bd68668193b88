"""Artifact directories that appear whole or not at all, and the files inside them.

Everything is built in a hidden temp dir beside the destination and renamed into place at
the end, so a failure, Ctrl-C or SIGTERM never leaves a half-written output directory behind;
a lock beside the destination keeps two processes from writing one directory, and the next run
sweeps what a SIGKILL left.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeprune.base.console import json_default
from edgeprune.base.errors import InputError, OutputError, output_error


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


class _DestLock:
    """An exclusive ``flock`` on ``.DIR.lock`` beside DIR, holding the owner's pid.

    Between processes it is the lock; inside one process a newer ArtifactDir for the same DIR
    takes it over (an earlier one that failed before ``__enter__`` may not be collected yet, and
    one process runs one compile at a time per DIR). The file is unlinked by its last owner;
    a lock file left by a killed process is harmless (the kernel dropped its flock).
    """

    _held: dict[str, _DestLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, fd: int, created: list[Path]):
        self.path, self.fd, self.created = path, fd, created
        self.owner: object | None = None

    @classmethod
    def acquire(cls, path: Path, owner: object, where: str) -> _DestLock:
        with cls._guard:
            held = cls._held.get(str(path))
            if held is not None:
                held.owner = owner
                return held
            created = _make_parents(path.parent, where)
            try:
                fd = _flock_file(path, where)
            except BaseException:
                _remove_empty(created)
                raise
            lock = cls(path, fd, created)
            lock.owner = owner
            cls._held[str(path)] = lock
            return lock

    def release(self, owner: object) -> None:
        """Unlink and unlock if ``owner`` still owns it; folders made for it go if still empty."""
        with self._guard:
            if self.owner is not owner or self._held.get(str(self.path)) is not self:
                return
            del self._held[str(self.path)]
            try:
                os.unlink(self.path)  # before unlocking: a waiter then sees a fresh file
            except OSError:
                pass
            os.close(self.fd)
            _remove_empty(self.created)


def _make_parents(parent: Path, where: str) -> list[Path]:
    """Create ``parent`` and missing ancestors; returns the ones created, deepest first."""
    missing = []
    p = parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue  # another process made it meanwhile
        except OSError as exc:
            _remove_empty(made)
            raise (output_error(exc, f"{where}: cannot create the folder {d}") or exc) from None
        made.insert(0, d)
    return made


def _remove_empty(folders: list[Path]) -> None:
    for d in folders:
        try:
            os.rmdir(d)
        except OSError:
            break


def _flock_file(path: Path, where: str) -> int:
    """Open and ``flock`` the lock file; OutputError naming the holder when another has it."""
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise (output_error(exc, where) or exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputError(f"{where}: another edgeprune process{pid} is writing it; wait for it to "
                              "finish or choose another folder") from None
        # The previous owner may have unlinked the file between our open and our flock: the
        # lock is ours only if the name still points at the file we locked.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.unlink(path)
            os.close(fd)
            raise (output_error(exc, where) or exc) from None
        return fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP while the output is swapped in, so a Ctrl-C cannot strand the
    previous artifact as ``.DIR.old-PID``; a signal that came meanwhile is acted on right after."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class ArtifactDir:
    """``with ArtifactDir(dest, force) as tmp:`` fill ``tmp``; it becomes ``dest`` on success.

    Creating it takes ``.DIR.lock`` beside DIR (a second edgeprune process writing the same DIR
    fails at once instead of after minutes of work, and the final rename cannot race), then
    sweeps what a killed earlier run left there: temp dirs ``.DIR.PID.xxxx.tmp`` and
    ``.DIR.old-PID`` whose process is gone. On an exception (KeyboardInterrupt, and SIGTERM,
    which the CLI raises as one) the temp dir is removed, unless :meth:`reject` moved it to
    ``DIR.rejected`` first. Disk full, read-only or permission faults become one OutputError
    line naming ``-o DIR``. The lock goes at ``__exit__``, or when the object is collected (or
    the interpreter exits) if the caller failed before entering.
    """

    def __init__(self, dest: str | Path, *, force: bool = False):
        self.dest = Path(dest)
        self.force = force
        self.tmp: Path | None = None
        self.check_destination()
        self._abs = Path(os.path.abspath(self.dest))
        self._owner = object()
        self._lock = _DestLock.acquire(self._abs.with_name(f".{self._abs.name}.lock"), self._owner,
                                       self._where)
        self._release = weakref.finalize(self, self._lock.release, self._owner)
        try:
            self._sweep()
            self.check_destination()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give up DIR without writing it (the lock goes); ``__exit__`` does this itself."""
        self._release()

    @property
    def _where(self) -> str:
        return f"-o {self.dest}"

    def check_destination(self) -> None:
        if self.dest.exists() and not self.force:
            raise InputError(f"-o {self.dest}: already exists (pass --force to replace it)")
        if self.dest.exists() and not self.dest.is_dir():
            raise InputError(f"-o {self.dest}: exists and is not a directory")

    def _sweep(self) -> None:
        """Remove temp dirs of DIR left by killed runs (we hold the lock, and their pid is gone);
        a stranded ``.DIR.old-PID`` becomes DIR again when DIR is missing."""
        name = re.escape(self._abs.name)
        stale_tmp = re.compile(rf"\.{name}\.(\d+)\.[a-z0-9_]+\.tmp")
        stale_old = re.compile(rf"\.{name}\.old-(\d+)")
        try:
            entries = list(os.scandir(self._abs.parent))
        except OSError:
            return
        for entry in entries:
            match = stale_tmp.fullmatch(entry.name) or stale_old.fullmatch(entry.name)
            if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
                continue
            path = Path(entry.path)
            if match.re is stale_old and not self._abs.exists():
                os.replace(path, self._abs)
            else:
                shutil.rmtree(path, ignore_errors=True)

    def __enter__(self) -> Path:
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self._abs.name}.{os.getpid()}.", suffix=".tmp",
                                             dir=self._abs.parent))
        except OSError as exc:
            self._release()
            raise (output_error(exc, self._where) or exc) from None
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
        try:
            if self.tmp is None:
                return False
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None
                mapped = output_error(exc, self._where)
                if mapped is not None:
                    raise mapped from None
                return False
            with _signals_deferred():
                self._commit()
            return False
        finally:
            self._release()

    def _commit(self) -> None:
        """Swap the temp dir in as DIR (the previous DIR, with --force, goes only after)."""
        try:
            self.check_destination()
            old = None
            if self.dest.exists():
                old = self._abs.with_name(f".{self._abs.name}.old-{os.getpid()}")
                os.replace(self._abs, old)
            try:
                # rename(2) never merges: a non-empty DIR that appeared meanwhile fails it
                os.rename(self.tmp, self._abs)
            except BaseException:
                if old is not None:
                    os.replace(old, self._abs)
                raise
            self.tmp = None
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise OutputError(f"{self._where}: appeared while writing (another program created it); "
                                  "nothing written") from None
            raise (output_error(exc, self._where) or exc) from None
        finally:
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                self.tmp = None


def path_bytes(path: Path) -> int:
    """Size of a file, or of all files under a directory (SavedModel)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
