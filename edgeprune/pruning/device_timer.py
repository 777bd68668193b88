"""Latency-table points timed on a device that has no TensorFlow.

The single-layer models are built and converted on this machine (``LayerTimer.blob``);
only the .tflite files travel, in one job, and the device's runner times each one with its
own numpy and runtime (``runner.time_model``) — over the same SSH path as ``bench``, or
with another local Python. The table records the device it was measured on.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from edgeprune.base.errors import InputError
from edgeprune.device.jobs import RunRequest, model_name
from edgeprune.pruning.latency import LayerTimer, op_profiler_note


class DeviceTimer(LayerTimer):
    """A LayerTimer whose timing runs elsewhere: ``run(request) -> runner result``."""

    def __init__(self, threads: int, quant: str, run: Callable[[RunRequest], dict], label: str,
                 emulated: bool = False):
        super().__init__(threads, quant)
        self.run, self.label, self.emulated = run, label, emulated
        self._meta: dict | None = None

    def _request(self, models=(), **extra) -> RunRequest:
        return RunRequest(artifact=None, sha256=None, threads=(self.threads,), models=tuple(models),
                          extra={"time_runs": self.runs, "time_rounds": self.rounds, **extra})

    def meta(self) -> dict:
        """The device's facts, asked once (a job that times nothing)."""
        if self._meta is None:
            self._meta = self._meta_from(self.run(self._request(time_models=[]))["device"])
        return self._meta

    def _meta_from(self, device: dict) -> dict:
        if self.emulated:
            from edgeprune.device.emulated import label_device

            device = label_device(dict(device))
        meta = {"runtime": f"{device['runtime']} {device['runtime_version']}", "threads": self.threads,
                "quantization": self.quant, "cpu": device["cpu"], "machine": device["machine"],
                "device": self.label, "hostname": device.get("hostname"), "python": device.get("python"),
                "numpy": device.get("numpy"), "runtime_api": device.get("runtime_api", "Interpreter"),
                "benchmark_model": device.get("benchmark_model")}
        if self.emulated:
            meta["emulated"] = True
        return meta

    def time_blobs(self, blobs: list[bytes], progress=None) -> list[float | str]:
        if not blobs:
            return []
        with tempfile.TemporaryDirectory(prefix="edgeprune-table-") as work:
            paths = []
            for i, blob in enumerate(blobs):
                path = Path(work) / model_name(i)
                path.write_bytes(blob)
                paths.append(path)
            result = self.run(self._request(paths))
        self._meta = self._meta or self._meta_from(result["device"])
        rows = {row["name"]: row for row in result.get("timings", {}).get("models", [])}
        times = []
        for i in range(len(blobs)):
            row = rows.get(model_name(i), {"error": "not timed by the device"})
            times.append(row["us"] if "us" in row else f"{self.label}: {row['error']}")
        if progress:
            progress(len(blobs))
        return times


@contextmanager
def device_timer(*, target=None, host: str | None = None, remote_python: str | None = None, threads: int = 1,
                 quantization: str = "float32", ssh_options=(), ssh_config=None, output=None
                 ) -> Iterator[LayerTimer | None]:
    """The timer for ``--host H`` / a profile's ssh or emulated connection / ``--remote-python``
    alone (another local Python); None when the table is timed in this process."""
    from edgeprune.base.console import default_output
    from edgeprune.device.fleet import device_for
    from edgeprune.device.local import run_local
    from edgeprune.device.profiles import load_profile
    from edgeprune.device.remote import SshSettings, parse_host, run_remote

    out = output or default_output()
    profile = load_profile(target) if target is not None else None
    kind = profile.connection.kind if profile is not None and host is None else None
    if host is not None or kind == "ssh":
        device = device_for(host if host is not None else profile.connection.host,
                            python=remote_python or (profile.connection.python if host is None else None))
        if device.is_local:
            raise InputError("--host local: leave --host out to time the table on this machine")
        settings = SshSettings.from_env(ssh_options, ssh_config)
        python = device.python or "python3"
        yield DeviceTimer(threads, quantization, lambda r: run_remote(r, device.ssh, python=python, settings=settings,
                                                                      log=out.warn), device.label)
    elif kind == "emulated":
        from edgeprune.device.emulated import emulated_sshd

        with ExitStack() as stack:
            out.debug(f"starting sshd inside the emulated {profile.connection.system}")
            emu = stack.enter_context(emulated_sshd(profile.connection.system))
            settings = SshSettings.from_env(ssh_options, str(emu.config), connect_timeout=30)
            python = remote_python or emu.python
            ssh_host = parse_host(emu.name)
            yield DeviceTimer(threads, quantization, lambda r: run_remote(r, ssh_host, python=python,
                                                                          settings=settings, log=out.warn),
                              profile.name, emulated=True)
    elif remote_python is not None:
        label = f"local ({remote_python})"
        yield DeviceTimer(threads, quantization, lambda r: run_local(r, python=remote_python, label=label), label)
    else:
        yield None


def latency_table(model_path, output_path=None, *, target=None, host: str | None = None,
                  remote_python: str | None = None, ssh_options=(), ssh_config=None, threads: int = 1,
                  quantization: str = "float32", round_to: int = 1, min_channels: int = 1, custom_objects=None,
                  safe_mode: bool = True, input_shape=None, progress=None, output=None) -> dict:
    """``edgeprune latency-table``: :func:`edgeprune.pruning.api.latency_table`, timed where
    ``host`` / ``target`` (ssh or emulated connection) / ``remote_python`` say (see
    :func:`device_timer`); the summary names the device (``device``, ``machine``, ``emulated``)."""
    from edgeprune.pruning.api import latency_table as measure

    with device_timer(target=target, host=host, remote_python=remote_python, threads=threads,
                      quantization=quantization, ssh_options=ssh_options, ssh_config=ssh_config,
                      output=output) as timer:
        summary = measure(model_path, output_path, threads=threads, quantization=quantization, round_to=round_to,
                          min_channels=min_channels, custom_objects=custom_objects, safe_mode=safe_mode,
                          input_shape=input_shape, progress=progress, timer=timer)
        summary["op_profiler"] = _op_profiler_note(timer)
        return summary


def _op_profiler_note(timer: LayerTimer | None) -> str:
    """Where the table's per-layer times came from, asked of the device that timed them."""
    if timer is None:
        import shutil

        return op_profiler_note("this machine", shutil.which("benchmark_model"))
    meta = timer.meta()
    return op_profiler_note(meta.get("device") or "the device", meta.get("benchmark_model"))
