"""Measuring on the device: per-layer timing, the MLPerf protocol, device state, latency
tables timed by a Python without TensorFlow (in a subprocess and over a real sshd), and the
emulated target's refusals that need no root. The emulated target itself: test_emulated.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest
import sshd
from test_harness_local import build_models

import edgeprune.base.env  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from edgeprune.device.api import bench
from edgeprune.device.emulated import apt_mirror
from edgeprune.device.profiles import load_profile

PY = sys.executable


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("device-models"))


def lite_venv(root: Path) -> Path:
    """A venv that has only numpy and ai-edge-litert (this interpreter's own installs, linked
    in): the device side of edgeprune must work without TensorFlow."""
    import ai_edge_litert
    import numpy

    venv.EnvBuilder(with_pip=False).create(root)
    site = next(root.glob("lib/python3*/site-packages"))
    for module in (ai_edge_litert, numpy):
        src = Path(module.__file__).parent
        for path in [src, *src.parent.glob(f"{src.name}.libs"), *src.parent.glob(f"{src.name}-*.dist-info")]:
            os.symlink(path, site / path.name)
    python = root / "bin" / "python"
    no_tf = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True, text=True)
    assert no_tf.returncode != 0 and "No module named 'tensorflow'" in no_tf.stderr
    ok = subprocess.run([str(python), "-c", "import numpy, ai_edge_litert.interpreter"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    return python


def conv_model(path: Path) -> Path:
    from edgeprune.base.env import tf_keras

    K = tf_keras()
    K.utils.set_random_seed(0)
    inp = K.Input((8, 8, 3))
    h = K.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    h = K.layers.Conv2D(16, 3, padding="same", name="c2")(h)
    h = K.layers.GlobalAveragePooling2D()(h)
    K.Model(inp, K.layers.Dense(4, name="head")(h)).save(path)
    return path


def test_per_layer_times_every_conv_and_dense_with_its_macs(models):
    result = bench(models["int8"], runs=5, per_layer=True)
    per = result["devices"][0]["per_layer"]
    conv, hidden, head = per["layers"]  # in graph order (names follow Keras' session-wide counters)
    # the tiny classifier: Conv2D(4, 3x3) on 8x8x1 (valid -> 6x6), Dense 4->8, Dense 8->3
    assert conv["op"] == "CONV_2D" and conv["macs"] == 6 * 6 * 4 * 3 * 3 * 1 and conv["layer"].startswith("conv2d")
    assert (hidden["op"], hidden["macs"], head["op"], head["macs"]) == ("FULLY_CONNECTED", 4 * 8, "FULLY_CONNECTED", 8 * 3)
    assert all(row["us"] > 0 and row["share"] > 0 and row["macs_per_us"] > 0 for row in per["layers"])
    assert per["total_us"] == pytest.approx(result["devices"][0]["results"][0]["steady"]["p50_ms"] * 1000, rel=1e-3)
    assert per["sum_us"] == pytest.approx(sum(row["us"] for row in per["layers"]), rel=1e-3)


def test_mlperf_protocol_repeats_and_flags_the_spread(models):
    quick = {"min_queries": 30, "min_duration_s": 0.05, "repeats": 3, "pause_s": 0.01}
    result = bench(models["f32"], runs=5, protocol="mlperf", protocol_settings=quick)
    assert result["protocol"]["name"] == "mlperf" and result["protocol"]["compliant"] is False
    proto = result["devices"][0]["results"][0]["protocol"]
    assert [r["repeat"] for r in proto["repeats"]] == [1, 2, 3]
    assert all(r["count"] >= 30 and r["total_s"] > 0 for r in proto["repeats"])
    p90s = [r["p90_ms"] for r in proto["repeats"]]
    assert proto["p90_ms"] == pytest.approx(float(np.median(p90s)))
    assert proto["spread_pct"] == pytest.approx((max(p90s) - min(p90s)) / np.median(p90s) * 100)
    assert proto["spread_flagged"] == (proto["spread_pct"] > 5.0)
    assert all("load_average" in r["state_before"] for r in proto["repeats"])


def test_every_device_result_records_the_state_that_skews_latency(models):
    dev = bench(models["f32"], runs=3)["devices"][0]
    for key in ("state_before", "state_after"):
        state = dev[key]
        assert set(state) >= {"load_average", "governor", "cpu_mhz", "temperature_c", "throttled"}
        assert len(state["load_average"]) == 3  # Linux always exposes it


def test_protocol_errors_are_one_line(models):
    from edgeprune.base.errors import InputError

    with pytest.raises(InputError, match="unknown protocol 'spec'"):
        bench(models["f32"], protocol="spec")
    with pytest.raises(InputError, match="unknown key"):
        bench(models["f32"], protocol="mlperf", protocol_settings={"queries": 3})


def test_apt_mirror_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    assert apt_mirror(tmp_path) == "http://deb.debian.org/debian"  # nothing configured
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example.org/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example.org/debian/\nSuites: bookworm\n")
    assert apt_mirror(tmp_path) == "http://mirror.example.org/debian"
    (tmp_path / "sources.list").write_text("deb [arch=amd64] https://ftp.example.net/debian bookworm main\n")
    assert apt_mirror(tmp_path) == "https://ftp.example.net/debian"


def test_emulated_profile_is_rpi4_reached_by_emulation():
    emu, pi = load_profile("rpi4-emulated"), load_profile("rpi4")
    assert emu.connection.kind == "emulated" and emu.connection.system == "rpi4" and emu.arch == "aarch64"
    assert emu.operators == pi.operators and emu.budgets == pi.budgets and emu.pruning == pi.pruning
    assert emu.quantization == pi.quantization


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody")
def test_emulate_as_non_root_is_refused_in_one_line(tmp_path):
    tree = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(tree), "HOME": str(tmp_path)}
    os.chmod(tmp_path, 0o777)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", PY]
    if subprocess.run(as_nobody + ["-c", "import edgeprune.cli"], env=env, capture_output=True).returncode != 0:
        pytest.skip("user nobody cannot run this Python or read this tree")
    proc = subprocess.run(as_nobody + ["-m", "edgeprune", "targets", "emulate", "rpi4", "--dir", str(tmp_path / "rootfs")],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: emulating rpi4 needs root"), proc.stderr
    assert "--target rpi4" in lines[0] and not (tmp_path / "rootfs").exists()


def test_emulated_bench_before_the_system_is_prepared_says_how(tmp_path, models, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from edgeprune.base.errors import DeviceError

    with pytest.raises(DeviceError, match=r"not prepared .*edgeprune targets emulate rpi4"):
        bench(models["int8"], target="rpi4-emulated", runs=1)


@pytest.mark.slow
def test_latency_table_timed_by_a_python_without_tensorflow(tmp_path):
    python = lite_venv(tmp_path / "lite")
    model = conv_model(tmp_path / "m.h5")
    proc = subprocess.run([PY, "-m", "edgeprune", "latency-table", str(model), "-o", str(tmp_path / "t.json"),
                           "--remote-python", str(python), "--round-to", "8", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["device"] == f"local ({python})" and [r["name"] for r in info["layers"]] == ["c1", "c2", "head"]
    table = json.loads((tmp_path / "t.json").read_text())
    assert table["meta"]["device"] == f"local ({python})" and table["meta"]["runtime"].startswith("ai-edge-litert")
    assert all(us > 0 for e in table["entries"].values() for row in e["us"] for us in row)


@pytest.mark.ssh
@pytest.mark.slow
@pytest.mark.skipif(not sshd.sshd_available(), reason="OpenSSH server not installed (apt-get install openssh-server)")
def test_latency_table_timed_over_ssh_without_tensorflow_then_used_to_prune(tmp_path):
    python = lite_venv(tmp_path / "lite")
    model = conv_model(tmp_path / "m.h5")
    server = sshd.start_sshd(tmp_path / "sshd")
    try:
        proc = subprocess.run([PY, "-m", "edgeprune", "latency-table", str(model), "-o", str(tmp_path / "t.json"),
                               "--host", "edgeprune-test", "--ssh-config", str(server.config),
                               "--remote-python", str(python), "--round-to", "8", "--json"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert list(server.remote_tmp.glob("edgeprune.*")) == []  # the device was left clean
    finally:
        server.stop()
    info = json.loads(proc.stdout)
    table = json.loads((tmp_path / "t.json").read_text())
    meta = table["meta"]
    assert info["device"] == meta["device"] == "edgeprune-test" and meta["python"] and meta["numpy"]
    # c1 reads the model input (3 channels fixed) and c2/head vary: grids at widths 8 and 16
    grids = sorted((e["layer"], e["cin"], e["cout"]) for e in table["entries"].values())
    assert grids == [("c1", [3], [8, 16]), ("c2", [8, 16], [8, 16]), ("head", [8, 16], [4])]
    assert all(us > 0 for e in table["entries"].values() for row in e["us"] for us in row)
    # latency-aware pruning reads the device-measured table
    pruned = subprocess.run([PY, "-m", "edgeprune", "prune", str(model), "-o", str(tmp_path / "p.h5"),
                             "--target-latency", "0.9", "--latency-table", str(tmp_path / "t.json"),
                             "--round-to", "8", "--json"], capture_output=True, text=True, timeout=600)
    assert pruned.returncode == 0, pruned.stderr
    report = json.loads(pruned.stdout)
    assert report["latency_table"]["device"] == "edgeprune-test" and report["latency_table"]["points_measured"] == 0
    assert report["macs_after"] < report["macs_before"]
