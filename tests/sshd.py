"""A real OpenSSH server on 127.0.0.1 for the SSH tests: throwaway host and user keys, its
own known_hosts and an ssh client config (ssh -F) that points at them.

Runs as the current user (root in the dev container: PermitRootLogin prohibit-password).
Remote sessions get TMPDIR set (sshd SetEnv) to a directory the tests can watch, so they
can check that the device-side temp directory is removed.
"""
from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ports import free_port, wait_listening  # noqa: F401  (free_port: used by the tests as sshd.free_port)

SSHD = "/usr/sbin/sshd"


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return path


@dataclass
class SshServer:
    root: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    config: Path          # ssh -F file: aliases edgeprune-test and edgeprune-test-2
    remote_tmp: Path      # TMPDIR of remote sessions
    process: subprocess.Popen

    aliases = ("edgeprune-test", "edgeprune-test-2")

    @property
    def spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def client_config(self, name: str, *, identity: Path | None = None, known_hosts: Path | None = None) -> Path:
        """Another ssh -F file for the same server (a wrong key, an empty known_hosts...)."""
        path = self.root / name
        path.write_text(_client_config(self.port, self.user, identity or self.client_key,
                                       known_hosts or self.known_hosts))
        return path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _client_config(port: int, user: str, identity: Path, known_hosts: Path) -> str:
    return (
        f"Host {' '.join(SshServer.aliases)}\n"
        f"  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
        "Host *\n"
        f"  IdentityFile {identity}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        "  PasswordAuthentication no\n  KbdInteractiveAuthentication no\n  ConnectTimeout 5\n"
    )


def start_sshd(root: Path, remote_tmp: Path | None = None) -> SshServer:
    """Start sshd -D on a free port; wait until it accepts connections.

    ``remote_tmp`` becomes TMPDIR of the remote sessions (default: a fresh directory).
    """
    root.mkdir(parents=True, exist_ok=True)
    user = getpass.getuser()
    host_key = keygen(root / "host_ed25519", "edgeprune-test-host")
    client_key = keygen(root / "client_ed25519", "edgeprune-test-client")
    (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    if remote_tmp is None:
        remote_tmp = root / "remote-tmp"
        remote_tmp.mkdir()
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\n"
        f"SetEnv TMPDIR={remote_tmp}\nMaxStartups 50\nMaxSessions 50\nLogLevel ERROR\n"
    )
    known_hosts = root / "known_hosts"
    pub = (root / "host_ed25519.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    client_config = root / "ssh_config"
    client_config.write_text(_client_config(port, user, client_key, known_hosts))
    log = open(root / "sshd.log", "wb")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    server = SshServer(root, port, user, client_key, known_hosts, client_config, remote_tmp, process)
    if wait_listening(port, 15, exited=lambda: None if process.poll() is None
                      else f"sshd exited: {(root / 'sshd.log').read_text()[-2000:]}"):
        return server
    server.stop()
    raise RuntimeError("sshd did not start listening within 15 s")


def sshd_available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None
