"""Which devices to benchmark (local, --host, --target, --fleet) and running them in parallel."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgeprune.base.errors import EdgepruneError, InputError
from edgeprune.base.yamlfile import read_yaml
from edgeprune.device.proc import cancel_all, reset_cancel
from edgeprune.device.remote import SshHost, parse_host

LOCAL = "local"


@dataclass(frozen=True)
class Device:
    """One place to run the runner: this machine or an ssh host, with its python and threads."""

    label: str
    ssh: SshHost | None = None
    python: str | None = None
    threads: tuple[int, ...] | None = None
    emulated: bool = False  # reached by emulation: its latency is labelled, never gated

    @property
    def is_local(self) -> bool:
        return self.ssh is None


def device_for(spec: str, *, python: str | None = None, threads=None) -> Device:
    """'local' (this machine) or an ssh host spec."""
    threads = tuple(threads) if threads else None
    if spec == LOCAL:
        return Device(LOCAL, None, python, threads)
    host = parse_host(spec)
    return Device(host.label, host, python, threads)


def parse_threads(value, where: str) -> tuple[int, ...] | None:
    """Thread counts from ``"1,2,4"``, a list, or one int; ``where`` names the flag or file."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, str):
        items = [v for v in value.split(",") if v.strip()]
    try:
        out = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected a comma-separated list like 1,2,4, found {value!r}") from None
    if not out or any(t < 1 for t in out):
        raise InputError(f"{where}: expected positive thread counts, found {value!r}")
    return out


def load_fleet(path: str | Path) -> list[Device]:
    """Read a fleet YAML: ``hosts:`` (or a top-level list) of host strings or mappings
    ``{host, python?, threads?}``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: fleet file not found")
    data = read_yaml(p, str(p))
    entries = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{p}: expected a non-empty list under 'hosts:'")
    devices = []
    for i, entry in enumerate(entries):
        where = f"{p}: hosts[{i}]"
        if isinstance(entry, str):
            entry = {"host": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
            raise InputError(f"{where}: expected a host string or a mapping with 'host'")
        unknown = set(entry) - {"host", "python", "threads", "name"}
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (allowed: host, python, threads)")
        python = entry.get("python")
        if python is not None and not isinstance(python, str):
            raise InputError(f"{where}: python must be a path string")
        devices.append(device_for(entry["host"], python=python, threads=parse_threads(entry.get("threads"), where)))
    labels = [d.label for d in devices]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise InputError(f"{p}: host(s) listed twice: {', '.join(sorted(dup))}")
    return devices


def run_parallel(devices: list[Device], work: Callable[[Device], dict]) -> list[tuple[Device, dict | None, str | None]]:
    """Run ``work`` on every device at once; keep per-device results or error lines, in order."""
    def one(device: Device):
        try:
            return device, work(device), None
        except EdgepruneError as exc:
            return device, None, str(exc)

    reset_cancel()
    if len(devices) == 1:
        return [one(devices[0])]
    with ThreadPoolExecutor(max_workers=min(16, len(devices))) as pool:
        futures = [pool.submit(one, d) for d in devices]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            # Workers sit in ssh/subprocess waits the interrupt cannot reach: stop their
            # children so they return (and clean up their remote directories), then re-raise.
            cancel_all()
            raise
