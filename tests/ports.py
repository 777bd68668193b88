"""Local TCP ports for the test servers (sshd, PostgreSQL): pick a free one, wait until a
server listens on it."""
from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, seconds: float, *, step: float = 0.1, exited=lambda: None) -> bool:
    """True once 127.0.0.1:``port`` accepts a connection, False after ``seconds``.
    ``exited()`` is checked first on every try: a server that died raises what it returns."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if (failure := exited()) is not None:
            raise RuntimeError(failure)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(step)
    return False
