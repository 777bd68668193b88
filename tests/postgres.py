"""A real PostgreSQL server on 127.0.0.1 for the shared-study tests (Debian ``postgresql``).

``initdb`` and ``pg_ctl`` run in a fresh temp directory on a free port with trust auth for
the local test role. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user (``runuser``) in a directory it owns.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ports import free_port, wait_listening


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def postgres_available() -> bool:
    if not (_bin("initdb") and _bin("pg_ctl")):
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return shutil.which("runuser") is not None
    return True


@dataclass
class PostgresServer:
    root: Path
    port: int
    user: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        _run([_bin("pg_ctl"), "-D", str(self.root / "data"), "stop", "-m", "immediate", "-w"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)


def start_postgres() -> PostgresServer:
    """initdb + pg_ctl start on a free 127.0.0.1 port; returns when it accepts connections."""
    root = Path(tempfile.mkdtemp(prefix="edgeprune-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    user = "edgeprune"
    port = free_port()
    try:
        _run([_bin("initdb"), "-D", str(root / "data"), "-A", "trust", "-U", user, "--no-sync", "-E", "UTF8"])
        _run([_bin("pg_ctl"), "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-t", "60",
              "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off -c max_connections=100",
              "start"])
    except subprocess.CalledProcessError as exc:
        log = (root / "server.log").read_text()[-2000:] if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr[-2000:]} {log}") from None
    server = PostgresServer(root, port, user)
    if wait_listening(port, 30, step=0.2):
        return server
    server.stop()
    raise RuntimeError("PostgreSQL did not accept connections within 30 s")
