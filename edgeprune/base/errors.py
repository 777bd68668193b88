"""Errors that the CLI turns into one clear line and an exit code.

Exit codes are part of the interface: 0 success, 1 a verification, budget or device
failure, 2 bad usage or bad input.
"""
from __future__ import annotations

import errno
import os


class EdgepruneError(Exception):
    """Base class: the message is shown to the user as a single line."""

    exit_code = 2


class InputError(EdgepruneError):
    """The user's input (model, data, profile, flags) cannot be used. Exit 2."""

    exit_code = 2


class UnsafeModelError(InputError):
    """The model needs code to load (Lambda, custom objects) and safe mode refused it."""


class BudgetError(EdgepruneError):
    """The artifact breaks a budget of the device profile. Exit 1."""

    exit_code = 1


class VerificationError(EdgepruneError):
    """Accuracy or latency verification failed. Exit 1."""

    exit_code = 1


class DeviceError(EdgepruneError):
    """The device could not be reached or the runner failed on it. Exit 1."""

    exit_code = 1


class OutputError(EdgepruneError):
    """The output cannot be written: disk full, read-only, no permission, another process is
    writing it. The input was fine, so this is an exit-1 failure like a device's."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so every ``finally``/``__exit__`` cleans up
    (temp dirs, lock files, remote runs); the CLI exits 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# errno -> what the user reads; the faults an output path can hit that the user can fix.
_OUTPUT_FAULTS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.ENOTDIR: "a parent of it is a file, not a folder",
    errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long",
}


def output_error(exc: BaseException, where: str | None) -> OutputError | None:
    """The one-line error for an OSError met while writing ``where`` ("-o DIR", a file name), or
    None when ``exc`` is not such a fault. The one mapping of these errnos: ArtifactDir uses it
    for its folder, the CLI for anything that escaped a writer."""
    if not isinstance(exc, OSError) or exc.errno not in _OUTPUT_FAULTS:
        return None
    text = _OUTPUT_FAULTS[exc.errno]
    return OutputError(f"{where}: {text}" if where else text)


def known_fault(exc: BaseException) -> EdgepruneError | None:
    """An expected fault that escaped its reader or writer, as a one-line error (never "internal
    error"): an output OSError (named by its file when the OS gave one) or Pillow's
    decompression-bomb refusal. None for anything else."""
    if isinstance(exc, OSError):
        name = exc.filename
        return output_error(exc, None if name is None or isinstance(name, int) else os.fsdecode(name))
    if type(exc).__name__ == "DecompressionBombError":  # PIL.Image: not imported eagerly
        return InputError(f"image over the pixel limit ({exc}); raise it with EDGEPRUNE_MAX_IMAGE_PIXELS")
    return None
