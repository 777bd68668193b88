"""Run the runner on a device over SSH with the system OpenSSH client.

Using ``ssh`` itself (not a Python SSH library) means ~/.ssh/config aliases, agents,
ProxyJump and known_hosts all work as the user expects. Host keys are checked strictly and
ssh never prompts (BatchMode); an unknown host is refused with the command that adds it.

One connection does everything: the remote shell makes a fresh ``mktemp -d`` directory,
unpacks a tar stream (runner, artifact, eval data, job) from stdin into it, runs the runner
and removes the directory on exit, failure or signal (trap). The controller also removes it
after a failure or Ctrl-C. Only fixed names and shlex-quoted values appear in the remote
command; file names travel inside the tar stream, never through the shell.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edgeprune.base.errors import DeviceError, InputError
from edgeprune.device.jobs import RunRequest
from edgeprune.device.proc import cancelled, run_process
from edgeprune.device.results import decode_outputs, interpret, last_lines, parse_json_document

DIR_MARKER = "EDGEPRUNE-DIR "
SSH_ERROR = 255
EXIT_MKTEMP, EXIT_UNPACK, EXIT_NO_PYTHON = 96, 97, 127
DEFAULT_RETRIES = 2
ENV_OPTIONS = "EDGEPRUNE_SSH_OPTIONS"
ENV_CONFIG = "EDGEPRUNE_SSH_CONFIG"


@dataclass(frozen=True)
class SshHost:
    """A device reached with ssh: an alias from ~/.ssh/config or user@host[:port]."""

    spec: str
    destination: str
    port: int | None = None

    @property
    def label(self) -> str:
        return self.spec


def parse_host(spec: str) -> SshHost:
    """Parse ``alias``, ``user@host``, ``user@host:port``, ``[v6addr]:port`` or ``ssh://…``."""
    text = spec.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://"):].rstrip("/")
    if not text or any(c.isspace() for c in text) or text.startswith("-"):
        raise InputError(f"--host '{spec}': expected an ssh alias or user@host[:port]")
    port = None
    user, at, hostport = text.rpartition("@")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", hostport)
    if m:
        host, port_text = m.group(1), m.group(2)
    elif hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
    else:
        host, port_text = hostport, None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InputError(f"--host '{spec}': port must be a number 1-65535")
        port = int(port_text)
    if not host:
        raise InputError(f"--host '{spec}': no host name")
    return SshHost(spec=spec, destination=f"{user}{at}{host}", port=port)


@dataclass
class SshSettings:
    """How to call ssh: extra -o options, an optional config file, timeouts, retries."""

    options: list[str] = field(default_factory=list)
    config: str | None = None
    connect_timeout: int = 10
    retries: int = DEFAULT_RETRIES
    ssh: str = "ssh"

    @classmethod
    def from_env(cls, options=(), config=None, **kw) -> SshSettings:
        """Flags first, then EDGEPRUNE_SSH_OPTIONS ('-o K=V' words or bare K=V) and EDGEPRUNE_SSH_CONFIG."""
        opts = [_strip_o(o) for o in options]
        env_opts = os.environ.get(ENV_OPTIONS, "")
        words = shlex.split(env_opts)
        opts += [w for w in words if w != "-o"]
        config = config or os.environ.get(ENV_CONFIG) or None
        if config and not Path(config).expanduser().is_file():
            raise InputError(f"--ssh-config {config}: file not found")
        return cls(options=opts, config=str(Path(config).expanduser()) if config else None, **kw)

    def base_argv(self, host: SshHost) -> list[str]:
        argv = [self.ssh]
        if self.config:
            argv += ["-F", self.config]
        # ssh keeps the first value it sees for an option: the user's options win over our defaults.
        for opt in self.options:
            argv += ["-o", opt]
        argv += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                 "-o", f"ConnectTimeout={self.connect_timeout}",
                 "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
                 "-o", "LogLevel=ERROR", "-T"]
        if host.port is not None:
            argv += ["-p", str(host.port)]
        return argv + ["--", host.destination]

    def argv(self, host: SshHost, remote_command: str) -> list[str]:
        return self.base_argv(host) + [remote_command]


def _strip_o(option: str) -> str:
    option = option.strip()
    return option[2:].strip() if option.startswith("-o") else option


def remote_script(python: str) -> str:
    """The POSIX sh program run on the device (python is the only variable part, quoted)."""
    py = shlex.quote(python)
    return "\n".join([
        'd=$(mktemp -d "${TMPDIR:-/tmp}/edgeprune.XXXXXXXX") || exit %d' % EXIT_MKTEMP,
        f'printf "{DIR_MARKER}%s\\n" "$d" >&2',
        'trap \'cd / && rm -rf "$d"\' EXIT',
        "trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM",
        'tar -x -f - -C "$d" || exit %d' % EXIT_UNPACK,
        'cd "$d" || exit %d' % EXIT_UNPACK,
        f'if ! command -v {py} >/dev/null 2>&1; then '
        f'echo "edgeprune: python not found on the device: "{py} >&2; exit {EXIT_NO_PYTHON}; fi',
        f"{py} runner.py job.json",
    ])


def wrap_sh(script: str) -> str:
    """Run ``script`` with sh whatever the login shell is."""
    return "sh -c " + shlex.quote(script)


def _write_tar(stream: IO[bytes], request: RunRequest, job: dict) -> None:
    """Stream runner, artifact, eval data and job.json as an uncompressed tar."""
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in request.files().items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
        data = json.dumps(job).encode()
        info = tarfile.TarInfo("job.json")
        info.size = len(data)
        info.mtime = int(time.time())
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    stream.flush()


def resolved_endpoint(settings: SshSettings, host: SshHost) -> tuple[str, int]:
    """(hostname, port) ssh would really connect to (``ssh -G`` resolves aliases)."""
    argv = settings.base_argv(host)[:-2] + ["-G", host.destination]
    hostname, port = host.destination.rpartition("@")[2], host.port or 22
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return hostname, port
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key == "hostname":
            hostname = value.strip()
        elif key == "port" and value.strip().isdigit():
            port = int(value)
    return hostname, port


def classify_ssh_failure(settings: SshSettings, host: SshHost, stderr: str) -> str:
    """One line saying why ssh could not connect, from its exit 255 stderr."""
    name = host.label
    text = stderr
    tail = last_lines(stderr, 1)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
        h, p = resolved_endpoint(settings, host)
        return (f"{name}: the host key of {h}:{p} CHANGED since it was recorded in known_hosts "
                f"(possible man-in-the-middle); if the device was reinstalled, remove the old key with "
                f"`ssh-keygen -R {shlex.quote(h if p == 22 else f'[{h}]:{p}')}` and add the new one after "
                "verifying its fingerprint")
    if "Host key verification failed" in text or re.search(r"No \S+ host key is known", text):
        h, p = resolved_endpoint(settings, host)
        return (f"{name}: unknown host key for {h}:{p} (strict host key checking is on): verify the "
                f"device's fingerprint, then add it with `ssh-keyscan -p {p} {shlex.quote(h)} "
                ">> ~/.ssh/known_hosts`")
    if "Permission denied" in text or "Too many authentication failures" in text:
        return (f"{name}: authentication failed ({tail}); ssh runs with BatchMode (no password "
                "prompts): load a key into ssh-agent or set IdentityFile for this host in ~/.ssh/config")
    if "Connection refused" in text:
        h, p = resolved_endpoint(settings, host)
        return f"{name}: connection refused by {h}:{p} (is sshd running on the device, is the port right?)"
    if "timed out" in text:
        return f"{name}: connection timed out ({tail}); is the device on and reachable?"
    if "Could not resolve hostname" in text or "Name or service not known" in text:
        return f"{name}: unknown host name ({tail}); check the name or the alias in ~/.ssh/config"
    if "No route to host" in text or "Network is unreachable" in text or "Host is down" in text:
        return f"{name}: host unreachable ({tail})"
    if "Connection closed" in text or "Connection reset" in text or "kex_exchange_identification" in text:
        return f"{name}: the connection was closed during the handshake ({tail})"
    return f"{name}: ssh failed ({tail})"


def _remote_failure(host: SshHost, python: str, rc: int, out: str, err: str) -> None:
    """Raise the DeviceError for a remote command that ran but failed."""
    if "No space left on device" in err:
        raise DeviceError(f"{host.label}: the device is out of disk space (No space left on device)")
    if rc == EXIT_MKTEMP:
        raise DeviceError(f"{host.label}: cannot create a temporary directory on the device: {last_lines(err, 1)}")
    if rc == EXIT_UNPACK:
        raise DeviceError(f"{host.label}: cannot unpack the job on the device (is tar installed?): "
                          f"{last_lines(err, 1)}")
    if rc == EXIT_NO_PYTHON:
        raise DeviceError(f"{host.label}: python '{python}' not found on the device; install python3 or "
                          "pass --remote-python (profile: connection.python)")
    interpret(host.label, rc, out, err)


class RemoteRun:
    """One attempt at running a request on one host; remembers the remote temp dir."""

    def __init__(self, settings: SshSettings, host: SshHost, python: str):
        self.settings, self.host, self.python = settings, host, python
        self.remote_dir: str | None = None

    def _on_stderr(self, line: str) -> None:
        if line.startswith(DIR_MARKER) and self.remote_dir is None:
            self.remote_dir = line[len(DIR_MARKER):].strip()

    def execute(self, request: RunRequest) -> tuple[int, str, str]:
        job = request.job(remote=True)
        argv = self.settings.argv(self.host, wrap_sh(remote_script(self.python)))
        try:
            return run_process(argv, feed=lambda s: _write_tar(s, request, job), on_stderr_line=self._on_stderr)
        except FileNotFoundError:
            raise DeviceError(f"{self.host.label}: the ssh client '{self.settings.ssh}' is not installed "
                              "(apt install openssh-client)") from None

    def cleanup(self) -> bool:
        """Remove the remote temp dir from the controller (after a failure or Ctrl-C)."""
        if not self.remote_dir or not self.remote_dir.startswith("/"):
            return False
        command = "rm -rf -- " + shlex.quote(self.remote_dir)
        try:
            proc = subprocess.run(self.settings.argv(self.host, command), stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0


def run_remote(request: RunRequest, host: SshHost | str, *, python: str = "python3",
               settings: SshSettings | None = None, log=None) -> dict:
    """Benchmark on an ssh host; retries a connection dropped mid-run, then reports it."""
    if isinstance(host, str):
        host = parse_host(host)
    settings = settings or SshSettings.from_env()
    attempts = settings.retries + 1
    last_error = ""
    for attempt in range(1, attempts + 1):
        run = RemoteRun(settings, host, python)
        ok = False
        try:
            rc, out, err = run.execute(request)
            if cancelled():
                raise DeviceError(f"{host.label}: interrupted")
            if rc == SSH_ERROR and run.remote_dir is None:
                raise DeviceError(classify_ssh_failure(settings, host, err))
            if rc == SSH_ERROR and parse_json_document(out) is None:
                last_error = last_lines(err, 1)
                if log:
                    log(f"{host.label}: connection dropped during the run ({last_error}); "
                        f"attempt {attempt}/{attempts}")
                continue
            if rc != 0:
                _remote_failure(host, python, rc, out, err)
            result = interpret(host.label, rc, out, err)
            ok = True
        finally:
            if not ok:
                run.cleanup()
        if "eval" in result:
            result["eval"]["outputs"] = decode_outputs(result["eval"])
        result["transport"] = {"kind": "ssh", "host": host.spec, "python": python,
                               "remote_dir": run.remote_dir, "attempts": attempt}
        return result
    raise DeviceError(f"{host.label}: the connection dropped during the run {attempts} times "
                      f"(last: {last_error}); check the device's network and power")

