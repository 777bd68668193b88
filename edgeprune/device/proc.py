"""Run a runner-carrying process (local python or ssh) and collect its output.

stdin stays open while the process runs: the runner exits on its own when stdin closes, so
if the controller dies or is interrupted, the run on the device stops too.
"""
from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from typing import IO

_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()
_cancelled = threading.Event()


def cancel_all() -> None:
    """Stop every running child (Ctrl-C during a parallel fleet run); no new retries after this."""
    _cancelled.set()
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        _stop(proc)


def reset_cancel() -> None:
    _cancelled.clear()


def cancelled() -> bool:
    return _cancelled.is_set()


def run_process(argv: list[str], *, feed: Callable[[IO[bytes]], None] | None = None,
                on_stderr_line: Callable[[str], None] | None = None, cwd=None, env=None,
                timeout: float | None = None) -> tuple[int, str, str]:
    """Run argv, let ``feed`` write to its stdin, return (returncode, stdout, stderr).

    On KeyboardInterrupt (or any error) the process is terminated before re-raising.
    """
    # A session of its own: a terminal's Ctrl-C reaches only the controller, which then stops
    # the child in order (close stdin, terminate) instead of racing it.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True)
    with _live_lock:
        _live.add(proc)
    out_chunks: list[bytes] = []
    err_lines: list[str] = []

    def read_stdout():
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            out_chunks.append(chunk)

    def read_stderr():
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace")
            err_lines.append(line)
            if on_stderr_line is not None:
                on_stderr_line(line.rstrip("\n"))

    def write_stdin():
        try:
            if feed is not None:
                feed(proc.stdin)
            proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the process died early; its exit code and stderr say why

    threads = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr, write_stdin)]
    for t in threads:
        t.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except BaseException:
        _stop(proc)
        raise
    finally:
        with _live_lock:
            _live.discard(proc)
        for t in threads[:2]:
            t.join(timeout=5)
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
    return returncode, b"".join(out_chunks).decode("utf-8", "replace"), "".join(err_lines)


def _stop(proc: subprocess.Popen) -> None:
    """Close stdin (the runner's stop signal), then terminate, then kill."""
    try:
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    for action, wait_s in ((proc.terminate, 3), (proc.kill, 3)):
        if proc.poll() is not None:
            return
        action()
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
