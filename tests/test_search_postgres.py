"""Workers on several "machines" share one study in a real PostgreSQL server (tests/postgres.py).

Each worker is its own ``edgeprune search --worker`` process, as it would be on another
machine. Checked: the trials of the study, that no grid point is computed twice, that a
worker killed mid-trial leaves a failed trial that another worker's heartbeat check marks
and re-queues, that the study then completes, and that ``compile --from-study`` ships the
best trial.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import postgres
import pytest
from test_training_fixtures import write_search_inputs

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not postgres.postgres_available(), reason="PostgreSQL (initdb/pg_ctl) not installed")]

PY = sys.executable
SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")
ROOT = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def server():
    srv = postgres.start_postgres()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_search_inputs(tmp_path_factory.mktemp("pgsearch"))


def _worker(files: Path, url: str, study: str, out: str, *extra: str) -> subprocess.Popen:
    cmd = [PY, "-m", "edgeprune", "search", str(files / "digits.h5"), "--target", SMALL_CPU,
           "--val-data", str(files / "val.npz"), "--sampler", "grid", "--quantize", "float32,int8",
           "--storage", url, "--study-name", study, "--worker", "--latency-runs", "3",
           "-o", str(files / out), "--json", *extra]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _study(url: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=name, storage=url)


def _finish(proc: subprocess.Popen, timeout: int = 400) -> dict:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def test_two_workers_share_one_study_and_the_best_ships(server, files, tmp_path):
    import optuna

    ratios = ["--ratios", "0,0.25,0.5,0.75"]  # x 2 quantizations = 8 grid points
    a = _worker(files, server.url, "shared", "wa", *ratios)
    b = _worker(files, server.url, "shared", "wb", *ratios)
    ra, rb = _finish(a), _finish(b)

    study = _study(server.url, "shared")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = [(t.params["ratio"], t.params["quantization"]) for t in complete]
    assert len(points) == 8 and len(set(points)) == 8  # the whole grid, each point once
    assert set(ra["trials_run_here"]).isdisjoint(rb["trials_run_here"])
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) == 2  # both processes ran trials
    for t in complete:
        assert len(t.user_attrs["sha256"]) == 64 and t.user_attrs["device"] == "local"
        assert 0 <= t.user_attrs["accuracy"] <= 1 and t.user_attrs["latency_ms"] > 0
    # the best by Optuna's own record: highest accuracy among feasible trials
    best = max(complete, key=lambda t: (t.values[0], -t.user_attrs["latency_ms"]))

    dest = tmp_path / "shipped"
    proc = subprocess.run([PY, "-m", "edgeprune", "compile", "--from-study", server.url, "--study-name", "shared",
                           "--pick", "best", "-o", str(dest), "--json"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["study"]["study_name"] == "shared"
    picked = study.trials[manifest["study"]["trial"]]
    assert picked.values[0] == best.values[0]
    assert manifest["quantization"]["mode"] == picked.params["quantization"]
    assert manifest["artifact"]["sha256"] == picked.user_attrs["sha256"]  # the same artifact, rebuilt


def test_a_killed_worker_leaves_a_failed_trial_and_the_study_goes_on(server, files):
    import optuna

    args = ("--ratios", "0,0.5", "--heartbeat", "1", "--finetune-epochs", "0")
    victim = _worker(files, server.url, "killed", "wk", *args)
    deadline = time.time() + 120
    running = None
    while time.time() < deadline and running is None:
        time.sleep(0.3)
        try:
            study = _study(server.url, "killed")
        except KeyError:
            continue
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                running = t.number
    assert running is not None, "the worker never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(3)  # past the grace period (2 heartbeats)

    result = _finish(_worker(files, server.url, "killed", "wk2", *args))
    study = _study(server.url, "killed")
    assert study.trials[running].state == optuna.trial.TrialState.FAIL
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    points = [(t.params["ratio"], t.params["quantization"]) for t in complete]
    assert sorted(points) == sorted({(r, q) for r in (0.0, 0.5) for q in ("float32", "int8")})
    assert result["trials_run_here"]  # the second worker carried the study to its end
