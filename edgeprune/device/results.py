"""Read what a runner process left behind (exit code, stdout, stderr) into a result or one error line."""
from __future__ import annotations

import base64
import io
import json
import signal

import numpy as np

from edgeprune.base.errors import DeviceError

RUNNER_MISSING_DEPENDENCY = 3
RUNNER_BAD_JOB = 4


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def last_lines(text: str, n: int = 2) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("[runner] ")]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def parse_json_document(stdout: str) -> dict | None:
    """The runner's JSON document (the whole stdout, or its last line after shell noise)."""
    text = stdout.strip()
    if not text:
        return None
    for candidate in (text, text.splitlines()[-1]):
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def interpret(host: str, returncode: int, stdout: str, stderr: str) -> dict:
    """The runner's result for exit code 0; otherwise a DeviceError naming host and cause."""
    doc = parse_json_document(stdout)
    if "No space left on device" in stderr or "No space left on device" in stdout:
        raise DeviceError(f"{host}: the device is out of disk space (No space left on device)")
    if returncode == 0 and doc is not None and "error" not in doc:
        return doc
    if doc is not None and isinstance(doc.get("error"), dict):
        err = doc["error"]
        raise DeviceError(f"{host}: {err.get('message')} [{err.get('kind')}]")
    if returncode < 0 or 128 < returncode < 128 + 65:
        number = -returncode if returncode < 0 else returncode - 128
        name = _signal_name(number)
        why = {"SIGKILL": " (out of memory, or killed by someone)", "SIGSEGV": " (the runtime crashed)",
               "SIGABRT": " (the runtime aborted)", "SIGILL": " (an instruction this CPU lacks)",
               "SIGBUS": " (bus error)", "SIGTERM": " (terminated)", "SIGINT": " (interrupted)",
               "SIGHUP": " (hung up)"}.get(name, "")
        raise DeviceError(f"{host}: the runner was killed by {name}{why}; stderr: {last_lines(stderr)}")
    if returncode == 0:
        raise DeviceError(f"{host}: the runner printed no result; stderr: {last_lines(stderr)}")
    raise DeviceError(f"{host}: the runner failed with exit code {returncode}: {last_lines(stderr)}")


def decode_outputs(eval_result: dict) -> np.ndarray | dict | None:
    """The eval outputs the runner sent inline (base64) or wrote to a local file: an array
    (.npy, one output) or a dict keyed by output name (.npz, several outputs)."""
    if "outputs_npy_b64" in eval_result:
        source = io.BytesIO(base64.b64decode(eval_result.pop("outputs_npy_b64")))
    elif "outputs_path" in eval_result:
        source = eval_result["outputs_path"]
    else:
        return None
    data = np.load(source, allow_pickle=False)
    if hasattr(data, "files"):
        with data:
            return {k: data[k] for k in data.files}
    return data
