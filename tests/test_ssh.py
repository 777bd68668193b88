"""``edgeprune bench`` over SSH against a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

The "device" is this machine reached through sshd, so the remote python is this test's
interpreter (it has numpy and ai-edge-litert); other pythons stand in for broken devices.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest
import sshd
from test_harness_local import build_models

import edgeprune.base.env  # noqa: F401

pytestmark = pytest.mark.skipif(not sshd.sshd_available(),
                                reason="OpenSSH server not installed (apt-get install openssh-server)")

PY = sys.executable


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = sshd.start_sshd(tmp_path_factory.mktemp("sshd"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("ssh-models"))


def cli(server, *args, config=None, env=None):
    """Run the real CLI in a subprocess (as a user would), pointed at the test ssh config."""
    argv = [PY, "-m", "edgeprune", "bench", *map(str, args), "--ssh-config", str(config or server.config)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180)


def remote_dirs(server) -> list[Path]:
    return sorted(server.remote_tmp.glob("edgeprune.*"))


def ctrl_c_when_running(argv, server, running):
    """Start ``argv``, press Ctrl-C once ``running()`` holds, and check the exit code 130 and
    that the device is left clean (no remote directory, no runner process).

    SIGINT is restored in this process first: a test run started as a background job of a
    non-interactive shell inherits it ignored, and an ignored signal stays ignored across exec.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(running, timeout=60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert wait_until(lambda: remote_dirs(server) == [] and runner_pid(server) is None, timeout=15)


def wait_until(predicate, timeout=20.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def runner_pids(server, exclude=()) -> list[int]:
    """PIDs of the runners whose working directory is inside the server's remote TMPDIR."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if any(part.endswith(b"runner.py") for part in cmdline) and cwd.startswith(str(server.remote_tmp)):
            found.append(int(entry.name))
    return found


def runner_pid(server, exclude=()) -> int | None:
    """PID of a runner whose working directory is inside the server's remote TMPDIR."""
    return next(iter(runner_pids(server, exclude)), None)


def parent_pid(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def sshd_session_of(runner: int) -> int | None:
    """The per-connection sshd process above a runner (runner <- sh <- sshd), if it is still there."""
    try:
        session = parent_pid(parent_pid(runner))
        cmdline = Path(f"/proc/{session}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return session if session > 1 and b"sshd" in cmdline else None


def one_line_error(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("edgeprune: error: "), proc.stderr
    return lines[-1]


def test_end_to_end_user_at_host_port(server, models):
    proc = cli(server, models["int8"], "--host", server.spec, "--remote-python", PY, "--threads", "1,2",
               "--runs", "10", "--warmup", "1", "--val-data", models["eval"], "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    dev = doc["devices"][0]
    assert dev["host"] == server.spec and dev["transport"]["kind"] == "ssh"
    assert dev["device"]["hostname"] and dev["device"]["runtime"] == "ai-edge-litert"
    assert dev["artifact"]["sha256"] == doc["artifact"]["sha256"]  # hashed on the device
    assert [r["threads"] for r in dev["results"]] == [1, 2]
    assert all(r["steady"]["p50_ms"] <= r["steady"]["p99_ms"] for r in dev["results"])
    local = json.loads(subprocess.run([PY, "-m", "edgeprune", "bench", str(models["int8"]), "--runs", "2",
                                       "--val-data", str(models["eval"]), "--json"],
                                      capture_output=True, text=True, check=True).stdout)
    assert dev["eval"]["accuracy"] == local["devices"][0]["eval"]["accuracy"]
    remote_dir = dev["transport"]["remote_dir"]
    assert remote_dir.startswith(str(server.remote_tmp)) and not Path(remote_dir).exists()
    assert remote_dirs(server) == []


def test_fleet_two_hosts_in_parallel(server, models, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"hosts:\n  - host: {server.aliases[0]}\n    python: {PY}\n    threads: [2]\n"
                     f"  - host: {server.aliases[1]}\n    python: {PY}\n")
    proc = cli(server, models["f32"], "--fleet", fleet, "--runs", "5", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert server.aliases[0] in proc.stdout and server.aliases[1] in proc.stdout
    proc = cli(server, models["f32"], "--fleet", fleet, "--runs", "5", "--warmup", "1", "--json")
    devices = json.loads(proc.stdout)["devices"]
    assert [d["host"] for d in devices] == list(server.aliases)
    assert [r["threads"] for r in devices[0]["results"]] == [2]
    assert [r["threads"] for r in devices[1]["results"]] == [1]
    assert remote_dirs(server) == []


def test_nasty_file_name_cannot_inject(server, models, tmp_path):
    nasty = tmp_path / "a b;touch pwned.tflite"
    nasty.write_bytes(Path(models["f32"]).read_bytes())
    watched = [Path.home() / "pwned.tflite", Path.cwd() / "pwned.tflite", server.remote_tmp / "pwned.tflite"]
    assert not any(p.exists() for p in watched)
    proc = cli(server, nasty, "--host", server.aliases[0], "--remote-python", PY, "--runs", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["devices"][0]["artifact"]["name"] == nasty.name
    assert not any(p.exists() for p in watched)
    assert remote_dirs(server) == []


def test_wrong_key_is_an_authentication_failure(server, models, tmp_path):
    wrong = sshd.keygen(tmp_path / "wrong_key", "not-authorized")
    proc = cli(server, models["f32"], "--host", server.aliases[0], "--remote-python", PY,
               config=server.client_config("wrong_key_config", identity=wrong))
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert f"{server.aliases[0]}: authentication failed" in line and "Permission denied" in line


def test_unknown_host_key_is_refused_with_keyscan_hint(server, models, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    proc = cli(server, models["f32"], "--host", server.aliases[0], "--remote-python", PY,
               config=server.client_config("unknown_host_config", known_hosts=empty))
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "unknown host key" in line
    assert f"ssh-keyscan -p {server.port} 127.0.0.1 >> ~/.ssh/known_hosts" in line
    assert empty.read_text() == ""  # never accepted silently


def test_closed_port_is_connection_refused(server, models):
    port = sshd.free_port()
    proc = cli(server, models["f32"], "--host", f"{server.user}@127.0.0.1:{port}", "--remote-python", PY)
    assert proc.returncode == 1
    assert f"connection refused by 127.0.0.1:{port}" in one_line_error(proc)


def test_missing_python(server, models):
    proc = cli(server, models["f32"], "--host", server.aliases[0], "--remote-python", "/nonexistent/bin/python3")
    assert proc.returncode == 1
    assert "python '/nonexistent/bin/python3' not found on the device" in one_line_error(proc)
    assert remote_dirs(server) == []


@pytest.fixture(scope="module")
def pythons(tmp_path_factory):
    """A python without numpy, and one with numpy but no TFLite runtime."""
    root = tmp_path_factory.mktemp("pythons")
    bare, numpy_only = root / "bare", root / "numpy-only"
    for env in (bare, numpy_only):
        venv.EnvBuilder(with_pip=False).create(env)
    purelib = subprocess.check_output([str(numpy_only / "bin" / "python"), "-c",
                                       "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip()
    shim = root / "numpy-shim"
    shim.mkdir()
    site = Path(np.__file__).resolve().parents[1]
    for name in ("numpy", "numpy.libs"):
        if (site / name).exists():
            (shim / name).symlink_to(site / name)
    (Path(purelib) / "numpy_shim.pth").write_text(f"{shim}\n")
    check = subprocess.run([str(numpy_only / "bin" / "python"), "-c", "import numpy\ntry:\n import ai_edge_litert\n"
                            "except ImportError: print('ok')"], capture_output=True, text=True)
    assert check.stdout.strip() == "ok", check.stderr
    return {"bare": bare / "bin" / "python", "numpy_only": numpy_only / "bin" / "python"}


def test_remote_without_runtime(server, models, pythons):
    proc = cli(server, models["f32"], "--host", server.aliases[0], "--remote-python", pythons["numpy_only"])
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "no TFLite runtime" in line and "pip install ai-edge-litert" in line and server.aliases[0] in line
    proc = cli(server, models["f32"], "--host", server.aliases[0], "--remote-python", pythons["bare"])
    assert proc.returncode == 1
    assert "numpy is not importable" in one_line_error(proc)
    assert remote_dirs(server) == []


def test_runner_killed_mid_run(server, models):
    argv = [PY, "-m", "edgeprune", "bench", str(models["f32"]), "--host", server.aliases[0], "--remote-python", PY,
            "--runs", "1000000000", "--ssh-config", str(server.config)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = wait_until(lambda: runner_pid(server), timeout=60)
        assert pid, "the runner never started on the device"
        assert remote_dirs(server)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    line = one_line_error(subprocess.CompletedProcess(argv, 1, out, err))
    assert f"{server.aliases[0]}: the runner was killed by SIGKILL" in line
    assert wait_until(lambda: remote_dirs(server) == [], timeout=10)


def test_ctrl_c_stops_the_remote_run_and_cleans_up(server, models):
    argv = [PY, "-m", "edgeprune", "bench", str(models["f32"]), "--host", server.aliases[0], "--remote-python", PY,
            "--runs", "1000000000", "--ssh-config", str(server.config)]
    ctrl_c_when_running(argv, server, lambda: runner_pid(server))


def first_attempt_never_ends(root: Path) -> tuple[Path, Path]:
    """A --remote-python for the device whose first run cannot finish by itself: it raises the
    job's runs to 10^9, then writes its pid (the runner's: it execs python) to a marker file.
    Later runs are the job as given. Returns (the wrapper, the marker)."""
    state = root / "attempts"
    state.mkdir()
    marker = state / "first.pid"
    wrapper = root / "python-first-attempt-blocks"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if mkdir "{state}/first" 2>/dev/null; then\n'
        f'  "{PY}" -c "import json, sys; j = json.load(open(sys.argv[1])); j[\'runs\'] = 10**9; '
        f'json.dump(j, open(sys.argv[1], \'w\'))" "$2" || exit 1\n'
        f'  echo $$ > "{marker}.tmp" && mv "{marker}.tmp" "{marker}"\n'
        "fi\n"
        f'exec "{PY}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, marker


def test_dropped_connection_is_retried(server, models, tmp_path):
    """Kill the sshd session process mid-run once: ssh exits 255 after connecting; the run is retried.

    The first attempt runs until its connection is gone (no race with a run that ends on its
    own); the retry is a normal 5-run job.
    """
    python, marker = first_attempt_never_ends(tmp_path)
    argv = [PY, "-m", "edgeprune", "bench", str(models["f32"]), "--host", server.aliases[0], "--remote-python",
            str(python), "--runs", "5", "--json", "--ssh-config", str(server.config)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(marker.exists, timeout=60), "the first runner never started on the device"
        session = sshd_session_of(int(marker.read_text()))
        assert session, "no sshd process above the runner"
        os.kill(session, signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "connection dropped during the run" in err
    assert json.loads(out)["devices"][0]["transport"]["attempts"] == 2
    # The orphaned first runner notices its closed stdin and its shell removes the directory.
    assert wait_until(lambda: remote_dirs(server) == [] and runner_pid(server) is None, timeout=15)


def test_target_profile_connection_and_env_config(server, models, tmp_path):
    """--target PROFILE uses connection.host/python and budgets; EDGEPRUNE_SSH_CONFIG replaces --ssh-config."""
    profile = tmp_path / "testpi.yaml"
    profile.write_text(
        "name: testpi\ndescription: sshd on localhost\ncpu: any\narch: x86_64\ncores: 2\nthreads: 2\n"
        "budgets:\n  max_latency_ms: 10000\n"
        f"connection:\n  kind: ssh\n  host: {server.aliases[1]}\n  python: {PY}\n")
    env = {**os.environ, "EDGEPRUNE_SSH_CONFIG": str(server.config)}
    proc = subprocess.run([PY, "-m", "edgeprune", "bench", str(models["f32"]), "--target", str(profile),
                           "--runs", "5", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["profile"] == "testpi" and doc["gate"] == {
        "max_latency_ms": 10000.0, "max_accuracy_drop": None, "mode": "point", "output": None, "checked": True,
        "passed": True, "failures": [], "notes": []}
    assert doc["devices"][0]["host"] == server.aliases[1]
    assert [r["threads"] for r in doc["devices"][0]["results"]] == [2]


@pytest.mark.parametrize("rc, stderr, expected", [
    (97, "tar: runner.py: Cannot write: No space left on device\n", "out of disk space"),
    (1, "OSError: [Errno 28] No space left on device\n", "out of disk space"),
    (96, "mktemp: failed to create directory via template '/tmp/edgeprune.XXXXXXXX': Read-only file system\n",
     "cannot create a temporary directory"),
    (137, "", "killed by SIGKILL (out of memory"),
    (139, "", "killed by SIGSEGV"),
    (127, "", "python 'python3' not found"),
    (1, "Traceback (most recent call last):\nValueError: boom\n", "exit code 1: Traceback"),
])
def test_remote_failure_lines(rc, stderr, expected):
    """How exit codes and stderr from the device map onto one error line (texts as real tools print them)."""
    from edgeprune.base.errors import DeviceError
    from edgeprune.device.remote import _remote_failure, parse_host

    with pytest.raises(DeviceError) as err:
        _remote_failure(parse_host("pi@rpi"), "python3", rc, "", stderr)
    assert str(err.value).startswith("pi@rpi: ") and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_ctrl_c_during_a_fleet_run(server, models, tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("".join(f"- host: {alias}\n  python: {PY}\n" for alias in server.aliases))
    argv = [PY, "-m", "edgeprune", "bench", str(models["f32"]), "--fleet", str(fleet), "--runs", "1000000000",
            "--ssh-config", str(server.config)]
    ctrl_c_when_running(argv, server, lambda: len(runner_pids(server)) == 2)  # both runs under way


def test_device_out_of_disk(models, tmp_path):
    """TMPDIR of the remote sessions on a 16 KiB tmpfs: the upload fails with ENOSPC."""
    full = tmp_path / "full"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the ENOSPC mapping is covered by test_remote_failure_lines")
    srv = None
    try:
        srv = sshd.start_sshd(tmp_path / "sshd-full", remote_tmp=full)
        proc = cli(srv, models["int8"], "--host", srv.aliases[0], "--remote-python", PY, "--runs", "2")
        assert proc.returncode == 1
        assert "the device is out of disk space" in one_line_error(proc)
        assert list(full.iterdir()) == []
    finally:
        if srv is not None:
            srv.stop()
        subprocess.run(["umount", str(full)], capture_output=True)


def test_connection_dropped_every_time_is_reported(server, models):
    """Each attempt loses its connection: after the bounded retries, one clear error."""
    import threading

    from edgeprune.base.errors import DeviceError
    from edgeprune.device.api import bench

    outcome = {}

    def run():
        try:
            bench(models["f32"], hosts=[server.aliases[0]], remote_python=PY, runs=1_000_000_000,
                  ssh_config=str(server.config), retries=1)
        except DeviceError as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=run)
    worker.start()
    killed = set()
    deadline = time.time() + 90
    while worker.is_alive() and time.time() < deadline:
        pid = runner_pid(server, exclude=killed)
        session = sshd_session_of(pid) if pid else None
        if session:
            os.kill(session, signal.SIGKILL)  # drop this attempt's connection
            killed.add(pid)
        time.sleep(0.05)
    worker.join(timeout=30)
    assert len(killed) == 2
    assert "the connection dropped during the run 2 times" in outcome.get("error", ""), outcome
    assert wait_until(lambda: remote_dirs(server) == [] and runner_pid(server) is None, timeout=15)
