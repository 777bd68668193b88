"""Run the runner on this machine in a subprocess, exactly as a device would run it."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from edgeprune.device.jobs import RUNNER_PATH, RunRequest
from edgeprune.device.proc import run_process
from edgeprune.device.results import decode_outputs, interpret


def run_local(request: RunRequest, *, python: str | None = None, label: str = "local") -> dict:
    """Benchmark on this machine with ``python`` (default: this interpreter) in a subprocess.

    A separate process keeps the peak resident memory the runner's own, not the
    controller's (which has TensorFlow loaded).
    """
    with tempfile.TemporaryDirectory(prefix="edgeprune-local-") as work:
        outputs = Path(work) / "outputs.npy"
        job_path = Path(work) / "job.json"
        job_path.write_text(json.dumps(request.job(remote=False, outputs_path=outputs)))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the runner must stand alone, as on a device
        try:
            rc, out, err = run_process([python or sys.executable, str(RUNNER_PATH), str(job_path)],
                                       cwd=work, env=env)
        except FileNotFoundError:
            from edgeprune.base.errors import DeviceError

            raise DeviceError(f"{label}: python '{python}' not found") from None
        result = interpret(label, rc, out, err)
        if "eval" in result:
            result["eval"]["outputs"] = decode_outputs(result["eval"])
            result["eval"].pop("outputs_path", None)
    result["transport"] = {"kind": "local", "python": python or sys.executable}
    return result
