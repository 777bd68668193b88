"""An emulated Raspberry Pi: an arm64 Debian root file system run through qemu-user-static.

Why: every figure edgeprune measured ran on x86, yet int8 pays off on ARM and the ARM build
of LiteRT has kernels of its own. Users without a Pi, and CI, still need to prove that an
artifact loads, runs and matches its reference on the aarch64 LiteRT build. Debian bookworm
arm64 is the base of Raspberry Pi OS 64-bit; with binfmt_misc the kernel hands every aarch64
binary in it to qemu, so ``chroot ROOT python`` runs the real aarch64 Python, numpy and
LiteRT wheels (slowly: latency under emulation means nothing and is labelled so).

``prepare`` builds the system once (debootstrap, second stage under emulation, a venv with
the aarch64 wheels fetched on the host) into a cache directory and reuses it afterwards.
``emulated_sshd`` starts an OpenSSH server inside it on 127.0.0.1 with throwaway keys and
strict host-key checking, so benches travel the same SSH path (harness/remote.py) as for a
real Pi. The server runs in its own PID and mount namespaces (``unshare``): /proc and /dev
are mounted only there, and stopping the namespace's first process ends every process in
it, so nothing outlives a bench, whether it ends normally, fails or is interrupted.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgeprune.base.errors import DeviceError, InputError

MARKER = "edgeprune-emulated.json"
VENV = "/opt/edgeprune/venv"
WHEELS = "/opt/edgeprune/wheels"
PACKAGES = ("python3", "python3-venv", "python3-pip", "openssh-server")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
RUNTIME_PIN = "ai-edge-litert==2.3.0"  # when this machine has none installed to match
# what runs inside the system sees a clean environment, not this machine's PIP_*/PYTHON* settings
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class System:
    """A device the emulator stands in for: its Debian architecture, suite and Python."""

    name: str
    debian_arch: str
    qemu_arch: str
    suite: str
    python_version: str
    wheel_platforms: tuple[str, ...]


SYSTEMS = {
    "rpi4": System("rpi4", "arm64", "aarch64", "bookworm", "3.11",
                   ("manylinux_2_27_aarch64", "manylinux2014_aarch64")),
}


def system_for(name: str) -> System:
    try:
        return SYSTEMS[name]
    except KeyError:
        raise InputError(f"unknown emulated system '{name}' (available: {', '.join(SYSTEMS)})") from None


def default_dir(name: str) -> Path:
    """$XDG_CACHE_HOME/edgeprune/emulated/NAME (default ~/.cache/...): built once, reused."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeprune" / "emulated" / name


def system_dir(name: str, directory=None) -> Path:
    return Path(directory).expanduser().absolute() if directory else default_dir(name)


def read_marker(root: Path) -> dict | None:
    """The facts a finished build recorded (None: not built, or built half-way)."""
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- host checks

def apt_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses (sources.list or deb822 .sources), else deb.debian.org."""
    uris = []
    files = [sources_dir / "sources.list"] + sorted((sources_dir / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file() or not path.name.endswith((".list", ".sources")):
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("URIs:"):
                uris += line.split()[1:]
            elif line.startswith("deb ") and not line.startswith("deb-src"):
                words = [w for w in line.split()[1:] if not w.startswith("[")]
                if words and "]" not in words[0]:
                    uris.append(words[0])
    for uri in uris:
        clean = uri.rstrip("/")
        if clean.startswith(("http://", "https://")) and clean.endswith("/debian"):
            return clean
    return DEFAULT_MIRROR


def _binfmt_entry(qemu_arch: str) -> dict | None:
    path = BINFMT / f"qemu-{qemu_arch}"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    facts = {"enabled": bool(lines) and lines[0].strip() == "enabled"}
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        facts[key.rstrip(":")] = value.strip()  # "interpreter PATH", "flags: PF", "offset 0"
    return facts


def check_host(system: System) -> dict:
    """Root, the tools, and binfmt_misc with qemu for the system's architecture; mount
    binfmt_misc when it is not. Raises DeviceError with one line saying what to do otherwise."""
    what = f"emulating {system.name}"
    alternative = f"or bench on a real device with `--target {system.name}`"
    if not sys.platform.startswith("linux"):
        raise DeviceError(f"{what} needs Linux (binfmt_misc and qemu-user-static); {alternative}")
    if os.geteuid() != 0:
        raise DeviceError(f"{what} needs root (debootstrap, chroot and binfmt_misc): run it with sudo, "
                          f"{alternative}")
    for tool, package in (("debootstrap", "debootstrap"), (f"qemu-{system.qemu_arch}-static", "qemu-user-static"),
                          ("unshare", "util-linux"), ("chroot", "coreutils")):
        if shutil.which(tool) is None:
            raise DeviceError(f"{what} needs {tool}: `apt-get install qemu-user-static binfmt-support debootstrap` "
                              f"(missing package {package})")
    if not (BINFMT / "status").exists():
        proc = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                              text=True)
        if proc.returncode != 0 or not (BINFMT / "status").exists():
            reason = (proc.stderr.strip().splitlines() or ["no such file system"])[-1]
            raise DeviceError(f"{what}: cannot mount binfmt_misc on {BINFMT} ({reason}); the kernel lacks "
                              "binfmt_misc or this container may not mount it: run on a host or VM "
                              f"(or a container started with --privileged), {alternative}")
    entry = _binfmt_entry(system.qemu_arch)
    if (entry is None or not entry["enabled"]) and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", f"qemu-{system.qemu_arch}"], capture_output=True)
        entry = _binfmt_entry(system.qemu_arch)
    if entry is None or not entry["enabled"]:
        raise DeviceError(f"{what}: qemu-{system.qemu_arch} is not registered in binfmt_misc: "
                          "`apt-get install qemu-user-static binfmt-support` registers it")
    if "F" not in entry.get("flags", ""):
        raise DeviceError(f"{what}: qemu-{system.qemu_arch} is registered in binfmt_misc without the F "
                          "(fix-binary) flag, so it cannot run inside a chroot: reinstall Debian's "
                          "qemu-user-static, which registers it with F")
    return {"binfmt": f"qemu-{system.qemu_arch}", "interpreter": entry.get("interpreter"),
            "flags": entry.get("flags"), "qemu": qemu_version(system)}


def qemu_version(system: System) -> str | None:
    try:
        out = subprocess.run([f"qemu-{system.qemu_arch}-static", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    return first.replace(" version ", " ") or None


# --------------------------------------------------------------------------- chroot commands

def chroot_argv(root: Path, argv: list[str], *, mounts: bool = True) -> list[str]:
    """argv run inside ``root`` in fresh PID and mount namespaces.

    /proc and /dev are mounted only inside the namespace, so they vanish with it; when the
    namespace's first process dies the kernel kills every other process in it.
    """
    setup = 'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && ' if mounts else ""
    return ["unshare", "--fork", "--pid", "--mount", "--propagation", "private", "--kill-child",
            "sh", "-c", setup + 'exec chroot "$0" "$@"', str(root), *argv]


def _run_step(argv: list[str], log_path: Path, what: str, env=None) -> None:
    """Run one build step, its output appended to the build log; DeviceError with the tail on failure."""
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        raise DeviceError(f"{what} failed (exit {proc.returncode}): {tail[0] if tail else '(no output)'}; "
                          f"full log: {log_path}")


def _host_runtime_pin() -> str:
    """The ai-edge-litert version this machine runs, so the ARM and x86 builds compare like for like."""
    try:
        from importlib import metadata

        return f"ai-edge-litert=={metadata.version('ai-edge-litert')}"
    except Exception:
        return RUNTIME_PIN


def prepare(name: str = "rpi4", directory=None, *, rebuild: bool = False, mirror: str | None = None,
            output=None) -> dict:
    """Build (once) the emulated system NAME and return its facts; a finished build is reused.

    Steps: debootstrap's first stage (arm64 packages, on the host), its second stage under
    emulation, the aarch64 wheels of ai-edge-litert and numpy downloaded on the host with pip,
    and a venv inside the system installed from them with ``--no-index``. The build happens in
    ``DIR.partial`` and is renamed to ``DIR`` at the end, so a failed or interrupted build
    never looks finished.
    """
    from edgeprune.base.console import default_output

    out = output or default_output()
    system = system_for(name)
    root = system_dir(name, directory)
    facts = read_marker(root)
    if facts is not None and not rebuild:
        return {**facts, "path": str(root), "reused": True}
    host = check_host(system)
    mirror = mirror or apt_mirror()
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    log_path = root.with_name(root.name + ".log")
    log_path.write_text("")
    steps = []
    started = time.monotonic()

    def step(label: str, index: int, fn) -> None:
        t0 = time.monotonic()
        with out.progress(f"[{index}/4] {label}"):
            fn()
        seconds = round(time.monotonic() - t0, 1)
        steps.append({"step": label, "seconds": seconds})
        out.info(f"[{index}/4] {label}: {seconds:.0f} s")

    pin = _host_runtime_pin()
    wheels = partial / WHEELS.lstrip("/")
    python = f"{VENV}/bin/python"
    try:
        step(f"debootstrap {system.suite} {system.debian_arch} (first stage, from {mirror})", 1, lambda: _run_step(
            ["debootstrap", f"--arch={system.debian_arch}", "--foreign", "--variant=minbase",
             f"--include={','.join(PACKAGES)}", system.suite, str(partial), mirror], log_path, "debootstrap"))
        step("second stage under emulation", 2, lambda: _run_step(
            chroot_argv(partial, ["/debootstrap/debootstrap", "--second-stage"], mounts=False), log_path,
            "debootstrap --second-stage", env=CHROOT_ENV))
        step(f"downloading the {system.qemu_arch} wheels of {pin} on this machine", 3, lambda: _run_step(
            [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
             "--python-version", system.python_version, *[f"--platform={p}" for p in system.wheel_platforms],
             "--dest", str(wheels), pin], log_path, "pip download"))
        step("venv with the wheels inside the system", 4, lambda: (
            _run_step(chroot_argv(partial, ["/usr/bin/python3", "-m", "venv", VENV]), log_path, "python3 -m venv",
                      env=CHROOT_ENV),
            _run_step(chroot_argv(partial, [python, "-m", "pip", "install", "--quiet", "--no-index",
                                            "--find-links", WHEELS, pin]), log_path, "pip install --no-index",
                      env=CHROOT_ENV)))
        probe = subprocess.run(chroot_argv(partial, [python, "-c", _PROBE]), capture_output=True, text=True,
                               env=CHROOT_ENV)
        if probe.returncode != 0:
            raise DeviceError(f"the emulated {name} cannot import LiteRT: {(probe.stderr.strip() or '?').splitlines()[-1]}")
        facts = {"system": name, "suite": system.suite, "arch": system.debian_arch, "mirror": mirror,
                 "python": python, **json.loads(probe.stdout.strip().splitlines()[-1]), "host": host,
                 "built_on": platform.machine(), "build_seconds": round(time.monotonic() - started, 1),
                 "steps": steps, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (partial / MARKER).write_text(json.dumps(facts, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if root.exists():
        old = root.with_name(root.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        root.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    partial.rename(root)
    return {**facts, "path": str(root), "reused": False}


_PROBE = ("import json, platform, numpy; from importlib import metadata; "
          "import ai_edge_litert.interpreter; "
          "print(json.dumps({'machine': platform.machine(), 'python_version': platform.python_version(), "
          "'numpy': numpy.__version__, 'runtime': 'ai-edge-litert ' + metadata.version('ai-edge-litert')}))")


def label_device(device: dict) -> dict:
    """Mark a runner's device facts as emulated. Under qemu-user the runner reads this
    machine's /proc/cpuinfo, so its CPU name is the host's: say so rather than let it pass
    for the emulated board's."""
    device["emulated"] = True
    if not str(device.get("cpu", "")).startswith("qemu-user"):
        device["cpu"] = f"qemu-user {device.get('machine', '?')} on {device.get('cpu', '?')}"
    return device


# --------------------------------------------------------------------------- sshd inside

@dataclass
class EmulatedHost:
    """A running sshd inside the emulated system, and how ssh reaches it."""

    name: str            # ssh alias in ``config``
    config: Path         # ssh -F file: port, throwaway key, known_hosts, strict checking
    python: str          # the venv's python inside the system
    port: int
    facts: dict          # what the build recorded (python, numpy, runtime, qemu)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def _stop(proc: subprocess.Popen) -> None:
    for action in (proc.terminate, proc.kill):
        if proc.poll() is not None:
            return
        action()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def emulated_sshd(name: str = "rpi4", directory=None, *, start_timeout: float = 60.0) -> Iterator[EmulatedHost]:
    """Run sshd inside the prepared system on a free 127.0.0.1 port for the ``with`` block.

    Host and client keys are made fresh for each run and live only in temporary directories;
    the client config pins the host key (StrictHostKeyChecking=yes) and allows that key only.
    """
    system = system_for(name)
    root = system_dir(name, directory)
    facts = read_marker(root)
    if facts is None:
        raise DeviceError(f"{name}-emulated: the emulated system is not prepared in {root}: run "
                          f"`edgeprune targets emulate {name}` first (as root, about 4 minutes once)")
    check_host(system)
    if shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        raise DeviceError(f"{name}-emulated: the OpenSSH client is missing (apt-get install openssh-client)")
    alias = f"{name}-emulated"
    client_dir = Path(tempfile.mkdtemp(prefix="edgeprune-emulated-ssh-"))
    (root / "run").mkdir(exist_ok=True)
    inner = Path(tempfile.mkdtemp(prefix="edgeprune-sshd-", dir=root / "run"))
    inside = "/run/" + inner.name
    proc = None
    try:
        host_pub = _keygen(inner / "host_ed25519", "edgeprune-emulated-host")
        client_pub = _keygen(client_dir / "client_ed25519", "edgeprune-emulated-client")
        (inner / "authorized_keys").write_text(client_pub + "\n")
        os.chmod(inner / "authorized_keys", 0o600)
        (root / "run" / "sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        port = _free_port()
        (inner / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {inside}/host_ed25519\n"
            f"PidFile {inside}/sshd.pid\nAuthorizedKeysFile {inside}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\nUseDNS no\n"
            "MaxStartups 20\nLogLevel ERROR\n")
        kind, key = host_pub.split()[:2]
        (client_dir / "known_hosts").write_text(f"[127.0.0.1]:{port} {kind} {key}\n")
        config = client_dir / "ssh_config"
        config.write_text(
            f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
            f"  IdentityFile {client_dir / 'client_ed25519'}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {client_dir / 'known_hosts'}\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n  PasswordAuthentication no\n  KbdInteractiveAuthentication no\n")
        log_path = client_dir / "sshd.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(chroot_argv(root, ["/usr/sbin/sshd", "-D", "-e", "-f", f"{inside}/sshd_config"]),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=CHROOT_ENV, start_new_session=True)
        _wait_for_banner(proc, port, log_path, alias, start_timeout)
        yield EmulatedHost(alias, config, facts.get("python", f"{VENV}/bin/python"), port, facts)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(inner, ignore_errors=True)
        shutil.rmtree(client_dir, ignore_errors=True)


def _wait_for_banner(proc: subprocess.Popen, port: int, log_path: Path, alias: str, timeout: float) -> None:
    """Until sshd (started under emulation, which takes a second or two) greets on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()][-1:]
            raise DeviceError(f"{alias}: sshd inside the emulated system exited ({tail[0] if tail else proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.settimeout(5)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise DeviceError(f"{alias}: sshd inside the emulated system did not answer within {timeout:.0f} s")
