"""The emulated Raspberry Pi (``edgeprune targets emulate rpi4``, ``--target rpi4-emulated``):
a real arm64 Debian bookworm under qemu-user-static, the aarch64 LiteRT wheels, an sshd
inside it, and the same runner over the same SSH path as a real Pi.

The system is built once into the user cache (~/.cache/edgeprune/emulated/rpi4, about 4
minutes on a fresh machine) and reused by later runs. Skipped only where this machine
cannot emulate at all: not root, or binfmt_misc cannot be mounted. CI runs as root, so
there it runs; a missing tool (debootstrap, qemu-user-static) fails instead of skipping.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_harness_local import build_models

import edgeprune.base.env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from edgeprune.base.errors import DeviceError
from edgeprune.device import emulated

PY = sys.executable
pytestmark = [pytest.mark.emulated, pytest.mark.slow]


def _cannot_emulate() -> str | None:
    if os.geteuid() != 0:
        return "emulating rpi4 needs root (debootstrap, chroot, binfmt_misc)"
    try:
        emulated.check_host(emulated.system_for("rpi4"))
    except DeviceError as exc:
        if "cannot mount binfmt_misc" in str(exc):
            return str(exc)
        raise  # a missing tool or registration is a setup failure, not a reason to skip
    return None


@pytest.fixture(scope="module")
def system():
    reason = _cannot_emulate()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    proc = subprocess.run([PY, "-m", "edgeprune", "targets", "emulate", "rpi4", "--json"], capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    how = "reused" if facts["reused"] else "built"
    steps = ", ".join("%s %.0f s" % (s["step"].split(" (")[0], s["seconds"]) for s in facts["steps"])
    print(f"\n[emulated rpi4] {how} in {time.monotonic() - t0:.0f} s; first build took {facts['build_seconds']:.0f} s "
          f"({steps})")
    assert facts["machine"] == "aarch64" and facts["runtime"].startswith("ai-edge-litert")
    return facts


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("emulated-models"))


def sshd_processes(root: str) -> list[int]:
    """PIDs of sshd processes whose root is the emulated system."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.path.realpath(entry / "root") == os.path.realpath(root) and b"sshd" in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_int8_artifact_on_the_aarch64_build_agrees_with_x86(system, models):
    proc = subprocess.run([PY, "-m", "edgeprune", "bench", str(models["int8"]), "--target", "rpi4-emulated",
                           "--val-data", str(models["eval"]), "--reference", str(models["reference"]), "--threads", "1",
                           "--runs", "5", "--warmup", "1", "--per-layer", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    dev = doc["devices"][0]
    assert dev["host"] == "rpi4-emulated" and dev["emulated"] is True and dev["device"]["emulated"] is True
    assert dev["device"]["machine"] == "aarch64" and dev["transport"]["kind"] == "ssh"
    assert dev["device"]["runtime"] == "ai-edge-litert" and dev["artifact"]["sha256"] == doc["artifact"]["sha256"]
    assert all(r["emulated"] for r in dev["results"]) and "emulated" in dev["latency_note"]
    # the latency budget of rpi4 (100 ms) is never checked against emulated latency
    assert doc["gate"]["failures"] == [] and not any("latency" in f for f in doc["gate"]["failures"])
    # agreement with the Keras reference, within int8 quantization: one output step each way
    with np.load(models["eval"]) as data:
        samples = len(data["x"])
    scale = _output_scale(models["int8"])
    assert dev["eval"]["accuracy"] is not None and doc["eval"]["samples"] == samples
    assert dev["agreement"]["top1_agreement"] >= 0.9 and dev["agreement"]["max_abs_error"] <= 4 * scale
    # ARM vs x86 on the same artifact: int8 kernels may differ by a rounding step at most
    host = dev["agreement_with_host"]
    assert host["host_machine"] == os.uname().machine and host["max_abs_error"] <= scale + 1e-7
    assert host["top1_agreement"] >= 0.97
    # one conv and two dense layers (names follow Keras' session-wide counters), each timed there
    assert [row["op"] for row in dev["per_layer"]["layers"]] == ["CONV_2D", "FULLY_CONNECTED", "FULLY_CONNECTED"]
    assert all(row["us"] > 0 for row in dev["per_layer"]["layers"]) and dev["per_layer"]["emulated"] is True
    print(f"\n[emulated rpi4] int8 vs x86: max abs error {host['max_abs_error']:.3g} "
          f"(output step {scale:.3g}), identical={host['identical']}")
    # the sshd inside the system is gone, and so is its throwaway run directory
    assert sshd_processes(system["path"]) == []
    assert list((Path(system["path"]) / "run").glob("edgeprune-sshd-*")) == []


def test_sshd_is_stopped_after_a_failed_run(system, models):
    proc = subprocess.run([PY, "-m", "edgeprune", "bench", str(models["f32"]), "--target", "rpi4-emulated",
                           "--remote-python", "/nonexistent/python", "--runs", "1"],
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgeprune: error:")]
    assert proc.returncode == 1 and lines and "python '/nonexistent/python' not found" in lines[-1], proc.stderr
    assert sshd_processes(system["path"]) == []


def _output_scale(path: Path) -> float:
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_output_details()[0]
    return float(detail["quantization"][0])
