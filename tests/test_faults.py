"""Faults while writing an artifact, with real processes: signals, a SIGKILL's leftovers, two
writers of one folder, a full disk and a read-only one.

``edgeprune compile`` runs in a subprocess on a tiny model. Where a fault must land while the
temp dir exists (that window is the last moment of a compile), a small real process holds
``ArtifactDir`` open with the CLI's signal handling and waits on its stdin until the test says go.
Each run is judged the same way: exit code, one stderr line, no traceback, and a listing of the
folder around the output that is unchanged (or holds exactly the finished artifact).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_models import tiny_keras3_cnn
from test_resource_limits import edgeprune, listing, one_error_line

PY = sys.executable

HOLDER = """
import sys
from edgeprune.base.artifacts import ArtifactDir
from edgeprune.cli import raise_on_termination
from edgeprune.base.errors import Terminated

raise_on_termination()
try:
    with ArtifactDir(sys.argv[1], force=True) as tmp:
        (tmp / "model.tflite").write_bytes(b"partial")
        print(tmp, flush=True)
        sys.stdin.readline()  # blocks until the test says go on (or signals us)
        (tmp / "done.txt").write_text("done")
except KeyboardInterrupt as exc:
    sys.exit(128 + exc.signum if isinstance(exc, Terminated) else 130)
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults-model") / "k3.keras"
    tiny_keras3_cnn().save(path)
    return path


@pytest.fixture(autouse=True)
def sigint_default():
    """Children inherit an ignored SIGINT when the tests run as a background job of a
    non-interactive shell (and an ignored signal stays ignored across exec): restore it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def popen(*args) -> subprocess.Popen:
    return subprocess.Popen([PY, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def compile_proc(model: Path, out: Path) -> subprocess.Popen:
    return popen("-m", "edgeprune", "compile", model, "-o", out)


def holder(out: Path) -> tuple[subprocess.Popen, Path]:
    """A process inside ``with ArtifactDir(out) as tmp``; returns it and its temp dir."""
    proc = popen("-c", HOLDER, out)
    line = proc.stdout.readline().strip()
    assert line, proc.communicate()[1]
    return proc, Path(line)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited before {path.name} appeared: {proc.communicate()[1]}"
        assert time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def lock_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


def assert_consistent(out: Path) -> None:
    """A finished artifact: the manifest's sha256 is the model's, nothing else beside it."""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifact"]["sha256"] == hashlib.sha256((out / "model.tflite").read_bytes()).hexdigest()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


# --- signals -------------------------------------------------------------------------------

SIGNALS = [(signal.SIGINT, 130, "edgeprune: interrupted"), (signal.SIGTERM, 143, "edgeprune: terminated (SIGTERM)")]


@pytest.mark.parametrize("sig, code, message", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_mid_compile_leaves_nothing(model, tmp_path, sig, code, message):
    before = listing(tmp_path)
    out = tmp_path / "out"
    proc = compile_proc(model, out)
    try:
        wait_for(lock_of(out), proc)  # the compile has begun: loading, converting
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert lines(err) == [message] and "Traceback" not in err
    assert listing(tmp_path) == before


@pytest.mark.parametrize("sig, code, message", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_signal_while_the_temp_dir_exists(tmp_path, sig, code, message):
    before = listing(tmp_path)
    proc, tmp = holder(tmp_path / "out")
    try:
        assert tmp.is_dir() and (tmp / "model.tflite").is_file() and lock_of(tmp_path / "out").is_file()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert listing(tmp_path) == before


def test_ctrl_c_inside_string_evaluated_code_still_exits_130_under_dash_m(tmp_path):
    """A Ctrl-C that lands in code run from a string (pybind11's exec in TensorFlow/LiteRT)
    makes CPython kill a ``python -m`` process with SIGINT after a clean ``sys.exit(130)``,
    unless the CLI clears that flag. Seen as an intermittent -2 from an interrupted search."""
    package = tmp_path / "interrupted_in_exec"
    package.mkdir()
    (package / "__main__.py").write_text(
        "from edgeprune.cli import _interrupted\n"
        "try:\n"
        "    exec('raise KeyboardInterrupt', {})\n"
        "except KeyboardInterrupt as exc:\n"
        "    _interrupted(exc)\n")
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run([PY, "-m", package.name], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 130, proc.stderr
    assert lines(proc.stderr) == ["edgeprune: interrupted"]


def test_sigkill_leftovers_are_swept_by_the_next_compile(model, tmp_path):
    out = tmp_path / "out"
    before = listing(tmp_path)
    proc, tmp = holder(out)
    proc.kill()
    proc.communicate(timeout=60)
    assert tmp.is_dir() and lock_of(out).is_file()  # what a SIGKILL leaves
    run = edgeprune("compile", model, "-o", out)
    assert run.returncode == 0, run.stderr
    assert not tmp.exists() and not lock_of(out).exists()
    assert_consistent(out)
    assert [p for p in listing(tmp_path) if not p.startswith("out/")] == [*before, "out"]


def test_sigkill_mid_commit_restores_the_previous_artifact(model, tmp_path):
    """A run killed between moving the old DIR aside and renaming the new one in leaves
    ``.DIR.old-PID``: the next run puts it back instead of deleting the user's artifact."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    stranded = tmp_path / f".out.old-{dead.pid}"
    stranded.mkdir()
    (stranded / "model.tflite").write_bytes(b"previous")
    run = edgeprune("compile", model, "-o", out)
    assert run.returncode == 2 and "already exists (pass --force" in one_error_line(run)
    assert (out / "model.tflite").read_bytes() == b"previous" and not stranded.exists()
    assert listing(tmp_path) == ["out", "out/model.tflite"]


# --- two writers ---------------------------------------------------------------------------

def test_second_writer_is_refused_while_the_first_holds_the_folder(model, tmp_path):
    out = tmp_path / "out"
    proc, tmp = holder(out)
    try:
        run = edgeprune("compile", model, "-o", out)
        assert run.returncode == 1
        assert one_error_line(run) == (f"edgeprune: error: -o {out}: another edgeprune process (pid {proc.pid}) is "
                                       "writing it; wait for it to finish or choose another folder")
        proc.stdin.write("go on\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert listing(tmp_path) == ["out", "out/done.txt", "out/model.tflite"]


def test_two_concurrent_compiles_one_wins(model, tmp_path):
    out = tmp_path / "out"
    first = compile_proc(model, out)
    try:
        wait_for(lock_of(out), first)
        second = compile_proc(model, out)
        results = [(p.returncode, err) for p in (first, second) for _, err in [p.communicate(timeout=300)]]
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0)
    assert len(lines(loser)) == 1 and "Traceback" not in loser, loser
    assert (f"-o {out}: another edgeprune process (pid {first.pid}) is writing it" in loser
            or f"-o {out}: already exists" in loser), loser
    assert_consistent(out)


# --- full and read-only disks ---------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.decode().strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults-artifact") / "art"
    run = edgeprune("compile", model, "-o", out)
    assert run.returncode == 0, run.stderr
    return out


def test_disk_full_while_writing(model, artifact, tmp_path):
    """A 64 KiB tmpfs: the lock file fits, the ~200 KB artifact does not."""
    bundle = tmp_path / "art.tar.gz"
    assert edgeprune("pack", artifact, "-o", bundle).returncode == 0
    before = listing(tmp_path)
    with tmpfs(tmp_path / "full", "64k") as full:
        for args, flag in ((("compile", model), full / "out"), (("unpack", bundle), full / "u"),
                           (("pack", artifact), full / "b.tar.gz")):
            run = edgeprune(*args, "-o", flag)
            assert run.returncode == 1, run.stderr
            assert one_error_line(run) == f"edgeprune: error: -o {flag}: no space left on device"
            assert list(full.iterdir()) == []
    assert listing(tmp_path) == [*before, "full"]


def test_read_only_output(model, tmp_path):
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as ro:
        run = edgeprune("compile", model, "-o", ro / "out")
        assert run.returncode == 1
        assert one_error_line(run) == f"edgeprune: error: -o {ro / 'out'}: read-only file system"
        run = edgeprune("compile", model, "-o", ro / "sub" / "out")
        assert run.returncode == 1
        assert one_error_line(run) == (f"edgeprune: error: -o {ro / 'sub' / 'out'}: cannot create the folder "
                                       f"{ro / 'sub'}: read-only file system")
        assert list(ro.iterdir()) == []


def test_output_under_a_file(model, tmp_path):
    (tmp_path / "file").write_text("x")
    before = listing(tmp_path)
    run = edgeprune("compile", model, "-o", tmp_path / "file" / "sub" / "out")
    assert run.returncode == 1
    assert one_error_line(run) == (f"edgeprune: error: -o {tmp_path / 'file' / 'sub' / 'out'}: cannot create the "
                                   f"folder {tmp_path / 'file' / 'sub'}: a parent of it is a file, not a folder")
    assert listing(tmp_path) == before
