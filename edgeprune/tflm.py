"""Check an artifact with the TensorFlow Lite Micro interpreter itself and read its exact arena.

TFLM has fewer kernels than LiteRT and plans memory its own way, so the only trustworthy
answer to "will it run, and in how much RAM" for a microcontroller is the real interpreter
(PyPI ``tflite-micro``). Its RecordingMicroAllocator prints the arena usage from C++ to
stdout, so we capture file descriptors 1 and 2 around the calls. TFLM can crash the process
on a model it cannot plan (a segfault with a tiny arena), so :func:`check` runs it in a child
process and turns a crash into a VerificationError.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from edgeprune.errors import VerificationError

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")


@contextmanager
def capture_fds() -> Iterator[list[str]]:
    """Collect what C++ code writes to fds 1 and 2 (Python's sys.std* are flushed first)."""
    sink: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            yield sink
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:  # pragma: no cover - a closed stream must not hide the result
                pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


def _reason(text: str, fallback: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "RecordingMicroAllocator" not in ln]
    return "; ".join(lines[:2])[:300] or fallback


def check(tflite: bytes, *, arena_size: int | None = None, timeout_s: float = 120.0) -> dict:
    """Load and run ``tflite`` once under TFLM in a child process; return exact arena bytes.

    ``arena_size`` is the buffer handed to TFLM (default: generous, so the measurement is not
    limited by it). Raises VerificationError when TFLM refuses or crashes on the model.
    """
    with tempfile.TemporaryDirectory(prefix="edgeprune-tflm-") as work:
        model = os.path.join(work, "model.tflite")
        with open(model, "wb") as fh:
            fh.write(bytes(tflite))
        cmd = [sys.executable, "-m", "edgeprune.tflm", model, str(arena_size or 0)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise VerificationError(f"TensorFlow Lite Micro did not finish within {timeout_s:g}s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    if proc.returncode == 0 and lines:
        payload = json.loads(lines[-1][len(_MARK):])
        if "error" in payload:
            raise VerificationError(payload["error"])
        return payload["result"]
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        hint = ("TFLM aborts on quantization parameters its kernels cannot represent, e.g. the "
                "huge softmax input scale of an untrained model" if name == "SIGABRT" else "no message")
        raise VerificationError(
            f"TensorFlow Lite Micro crashed ({name}) preparing the model "
            f"(arena buffer {arena_size or 'default'}): {_reason(proc.stdout + proc.stderr, hint)}"
        )
    raise VerificationError(f"TensorFlow Lite Micro check failed: {_reason(proc.stderr, f'exit {proc.returncode}')}")


_MARK = "@@edgeprune-tflm@@"


def check_in_process(tflite: bytes, *, arena_size: int | None = None) -> dict:
    """Load and run ``tflite`` once under TFLM in this process (may crash it: prefer ``check``).

    ``arena_size`` is the buffer handed to TFLM (default: generous, so the measurement is not
    limited by it). Raises VerificationError when TFLM refuses the model (missing kernel,
    float op without a TFLM kernel, arena too small).
    """
    from tflite_micro import runtime

    size = arena_size or max(16 << 20, 10 * len(tflite))
    with capture_fds() as out:
        try:
            interp = runtime.Interpreter.from_bytes(bytes(tflite), arena_size=size)
            error = None
        except Exception as exc:  # RuntimeError from the C++ side
            interp, error = None, exc
    if interp is None:
        raise VerificationError(f"TensorFlow Lite Micro cannot load the model: {_reason(out[0], str(error))}")
    inputs = []
    with capture_fds():  # the binding prints "index out of range" when we run past the end
        while True:
            try:
                inputs.append(interp.get_input_details(len(inputs)))
            except Exception:
                break
    with capture_fds() as out:
        try:
            for idx, detail in enumerate(inputs):
                shape = tuple(int(d) for d in detail["shape"])
                interp.set_input(np.zeros(shape, detail["dtype"]), idx)
            interp.invoke()
            error = None
        except Exception as exc:
            error = exc
    if error is not None:
        raise VerificationError(f"TensorFlow Lite Micro failed to run the model: {_reason(out[0], str(error))}")
    with capture_fds() as out:
        interp.print_allocations()
    text = out[0]
    total = _TOTAL.search(text)
    if total is None:
        raise VerificationError("TensorFlow Lite Micro did not report its arena usage")
    head, tail = _HEAD.search(text), _TAIL.search(text)
    return {
        "runtime": "tflm",
        "arena_bytes": int(total.group(1)),
        "arena_head_bytes": int(head.group(1)) if head else None,
        "arena_tail_bytes": int(tail.group(1)) if tail else None,
        "arena_buffer_bytes": size,
        "allocations": [ln.split("] ", 1)[-1] for ln in text.splitlines() if "' used " in ln],
        "tflm_version": _version(),
    }


def _main(argv: list[str]) -> int:
    model, arena = argv[0], int(argv[1])
    with open(model, "rb") as fh:
        data = fh.read()
    try:
        payload = {"result": check_in_process(data, arena_size=arena or None)}
    except VerificationError as exc:
        payload = {"error": str(exc)}
    sys.stdout.write(_MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()
    return 0


def _version() -> str | None:
    try:
        import tflite_micro

        return tflite_micro.__version__
    except Exception:  # pragma: no cover
        return None


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
