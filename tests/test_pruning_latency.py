"""Latency-aware pruning: per-layer tables timed with the real LiteRT interpreter, the greedy
allocator that meets a latency target, table files, and the CLI (prune, compile, latency-table).

No timing assertions: the tests check what the table predicts and how the allocator uses
it, never how fast this machine is.
"""
import json

import numpy as np
import pytest

import edgeprune.base.env  # noqa: F401
from edgeprune.base.env import tf_keras
from edgeprune.base.errors import InputError
from edgeprune.cli import main
from edgeprune.load.graph import trace
from edgeprune.pruning import macs as macs_mod
from edgeprune.pruning import prune_model
from edgeprune.pruning.latency import LatencyTable, _bilinear, grid_points
from edgeprune.training.iterative import step_targets


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def two_branch_model(uniform_weights=False):
    """One branch at 32x32, one at 4x4, same channel counts: only their resolution differs."""
    K = tf_keras()
    K.backend.clear_session()
    L = K.layers
    i = K.Input((32, 32, 8))
    hi = L.Conv2D(32, 3, padding="same", name="hi_a")(i)
    hi = L.ReLU()(hi)
    hi = L.Conv2D(32, 3, padding="same", name="hi_b")(hi)
    hi = L.GlobalAveragePooling2D()(hi)
    lo = L.AveragePooling2D(8)(i)
    lo = L.Conv2D(32, 3, padding="same", name="lo_a")(lo)
    lo = L.ReLU()(lo)
    lo = L.Conv2D(32, 3, padding="same", name="lo_b")(lo)
    lo = L.GlobalAveragePooling2D()(lo)
    x = L.Concatenate()([hi, lo])
    m = K.Model(i, L.Dense(5, name="out")(x))
    if uniform_weights:  # equal L1 scores everywhere: only latency can tell channels apart
        for layer in m.layers:
            if layer.get_weights():
                layer.set_weights([np.full_like(w, 0.01) for w in layer.get_weights()])
    return m


def channels(model, name):
    return model.get_layer(name).output_shape[-1]


@pytest.fixture(scope="module")
def pruned_by_latency():
    """The two-branch model pruned to 60 % of its predicted latency (table measured once)."""
    return prune_model(two_branch_model(), target_latency=0.6, round_to=4, min_channels=4)


def test_bilinear_hits_grid_points_and_interpolates():
    xs, ys = [4, 8, 16], [2, 6]
    grid = [[1.0, 3.0], [2.0, 6.0], [4.0, 12.0]]
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert _bilinear(xs, ys, grid, x, y) == pytest.approx(grid[i][j])
    assert _bilinear(xs, ys, grid, 12, 4) == pytest.approx(((2 + 6) / 2 + (4 + 12) / 2) / 2)
    assert _bilinear(xs, ys, grid, 100, 100) == pytest.approx(12.0)  # clamped
    assert _bilinear([8], [0], [[5.0]], 3, 7) == 5.0


def test_grid_points_follow_rounding_and_minimum():
    assert grid_points(64, True, 16, 16) == [16, 32, 64]
    assert grid_points(96, True, 8, 8) == [8, 24, 48, 96]
    assert grid_points(3, True, 4, 4) == [3]  # already at the minimum
    assert grid_points(64, False, 4, 4) == [64]  # locked axis: full width only


def test_latency_target_met_by_prediction(pruned_by_latency):
    report = pruned_by_latency.report
    lat = report["latency_table"]
    assert lat["points_measured"] > 10 and lat["signatures"] >= 4
    assert lat["runtime"].startswith(("ai-edge-litert", "tflite-runtime", "tensorflow"))
    # both figures are rounded to 0.1 us in the report: allow that, not more
    assert 0 < lat["predicted_us_after"] <= 0.6 * (lat["predicted_us_before"] + 0.05) + 0.05 + 1e-6
    assert report["macs_after"] < report["macs_before"]
    out = pruned_by_latency.model.predict(np.zeros((1, 32, 32, 8), np.float32), verbose=0)
    assert out.shape == (1, 5)


def test_high_resolution_branch_pruned_first_when_importance_is_equal():
    """With equal channel scores, the greedy removes channels where they cost most time."""
    m = two_branch_model(uniform_weights=True)
    res = prune_model(m, target_latency=0.7, round_to=4, min_channels=4, criterion="l1",
                      latency_objective="importance")
    assert channels(res.model, "hi_a") < 32
    assert channels(res.model, "hi_a") <= channels(res.model, "lo_a")


def test_table_file_is_reused_and_extended(tmp_path):
    path = tmp_path / "table.json"
    first = prune_model(two_branch_model(), target_latency=0.8, latency_table=path, round_to=8, min_channels=8)
    assert path.is_file() and first.report["latency_table"]["points_measured"] > 0
    data = json.loads(path.read_text())
    assert data["format"] == "edgeprune-latency-table/1" and data["meta"]["threads"] == 1
    second = prune_model(two_branch_model(), target_latency=0.8, latency_table=path, round_to=8, min_channels=8)
    assert second.report["latency_table"]["points_measured"] == 0
    assert [channels(second.model, n) for n in ("hi_a", "hi_b", "lo_a", "lo_b")] == \
        [channels(first.model, n) for n in ("hi_a", "hi_b", "lo_a", "lo_b")]
    # the table predicts the pruned model from its own entries
    tab = LatencyTable.load(path)
    g = trace(two_branch_model())
    assert tab.predict(g, {}) == pytest.approx(second.report["latency_table"]["predicted_us_before"], rel=1e-3)


def test_table_from_other_threads_or_device_is_refused(tmp_path):
    path = tmp_path / "table.json"
    prune_model(two_branch_model(), target_latency=0.9, latency_table=path, round_to=8, min_channels=8)
    with pytest.raises(InputError, match="threads=1, this run uses 2"):
        prune_model(two_branch_model(), target_latency=0.9, latency_table=path, threads=2, round_to=8, min_channels=8)
    data = json.loads(path.read_text())
    data["meta"]["cpu"] = "Cortex-A72"
    data["entries"].pop(next(iter(data["entries"])))
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="measured on Cortex-A72.*lacks 1 layer shape"):
        prune_model(two_branch_model(), target_latency=0.9, latency_table=path, round_to=8, min_channels=8)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a latency table"):
        prune_model(two_branch_model(), target_latency=0.9, latency_table=path, round_to=8, min_channels=8)


def test_foreign_complete_table_is_used_without_measuring(tmp_path):
    path = tmp_path / "table.json"
    prune_model(two_branch_model(), target_latency=0.9, latency_table=path, round_to=8, min_channels=8)
    data = json.loads(path.read_text())
    data["meta"].update(cpu="Cortex-A76", runtime="tflite-runtime 2.14.0", machine="aarch64")
    path.write_text(json.dumps(data))
    res = prune_model(two_branch_model(), target_latency=0.9, latency_table=path, round_to=8, min_channels=8)
    assert res.report["latency_table"]["points_measured"] == 0
    assert res.report["latency_table"]["runtime"] == "tflite-runtime 2.14.0"


def test_unreachable_and_invalid_targets():
    with pytest.raises(InputError, match="unreachable"):
        prune_model(two_branch_model(), target_latency=0.01, round_to=4, min_channels=4)
    with pytest.raises(InputError, match="target_latency"):
        prune_model(two_branch_model(), target_latency=1.5)
    with pytest.raises(InputError, match="exactly one of"):
        prune_model(two_branch_model(), ratio=0.5, target_latency=0.5)


def test_macs_objective_keeps_at_least_the_macs_of_a_uniform_ratio():
    """At the latency a uniform 50 % ratio is predicted to have, spending the latency where
    MACs are cheap keeps at least as many MACs (the point of latency-aware allocation)."""
    m = two_branch_model()
    g = trace(m)
    probe = prune_model(m, target_latency=0.999, round_to=4, min_channels=4)
    uniform = prune_model(m, ratio=0.5, round_to=4, min_channels=4)
    names = [layer.name for layer in m.layers]
    counts = {k: uniform.model.get_layer(t.producer).output_shape[-1]
              for k, t in g.tensors.items() if t.producer in names and t.spatial == 1}
    tab = probe.latency_table
    fraction = tab.predict(g, counts) / tab.predict(g, {})
    aware = prune_model(m, target_latency=fraction, latency_table=tab, round_to=4, min_channels=4,
                        latency_objective="macs")
    assert aware.report["macs_after"] >= uniform.report["macs_after"]
    assert macs_mod.total_macs(trace(aware.model)) == aware.report["macs_after"]


def test_iterative_latency_steps_are_geometric():
    steps = step_targets(3, target_latency=0.125)
    assert [round(s["latency_fraction"], 4) for s in steps] == [0.5, 0.25, 0.125]
    with pytest.raises(InputError, match="exactly one of"):
        step_targets(2, ratio=0.5, target_latency=0.5)


def test_cli_latency_table_then_prune(tmp_path, capsys):
    K = tf_keras()
    src = tmp_path / "m.keras"
    two_branch_model().save(src)
    table_path = tmp_path / "t.json"
    code, out, err = run(["latency-table", str(src), "-o", str(table_path), "--round-to", "8",
                          "--min-channels", "8", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert {r["name"] for r in info["layers"]} == {"hi_a", "hi_b", "lo_a", "lo_b", "out"}
    assert info["points_measured"] > 0 and table_path.is_file()
    dst = tmp_path / "p.keras"
    code, out, err = run(["prune", str(src), "--target-latency", "0.5", "--latency-table", str(table_path),
                          "--round-to", "8", "--min-channels", "8", "-o", str(dst), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["latency_table"]["points_measured"] == 0
    lat = report["latency_table"]  # figures rounded to 0.1 us
    assert lat["predicted_us_after"] <= 0.5 * (lat["predicted_us_before"] + 0.05) + 0.05 + 1e-6
    assert K.models.load_model(dst).count_params() == report["params_after"]


@pytest.mark.parametrize("argv, message", [
    (["--latency-table", "t.json", "--ratio", "0.5"], "--latency-table is used with --target-latency only"),
    (["--target-latency", "0"], "--target-latency must be in (0, 1]"),
    (["--target-latency", "0.5", "--ratio", "0.2"], "exactly one of --ratio, --target-macs or --target-latency"),
    (["--target-latency", "0.5", "--threads", "0"], "--threads must be >= 1"),
])
def test_cli_prune_latency_errors(tmp_path, capsys, argv, message):
    src = tmp_path / "m.keras"
    two_branch_model().save(src)
    dst = tmp_path / "p.keras"
    code, _, err = run(["prune", str(src), *argv, "-o", str(dst)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not dst.exists()


def test_cli_latency_table_errors(tmp_path, capsys):
    code, _, err = run(["latency-table", str(tmp_path / "missing.keras"), "-o", str(tmp_path / "t.json")], capsys)
    assert code == 2 and "no such file" in err
    src = tmp_path / "m.keras"
    two_branch_model().save(src)
    code, _, err = run(["latency-table", str(src), "-o", str(tmp_path / "t.txt")], capsys)
    assert code == 2 and "expected a .json" in err


def test_compile_prune_latency(tmp_path, capsys):
    src = tmp_path / "m.keras"
    two_branch_model().save(src)
    out_dir = tmp_path / "art"
    code, stdout, err = run(["compile", str(src), "--target", "tests/data/small-cpu.yaml",
                             "--target-latency", "0.5", "-o", str(out_dir), "--json"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["pruning"]["macs_after"] < json.loads(stdout)["pruning"]["macs_before"]
    report = json.loads((out_dir / "report.json").read_text())
    lat = report["pruning"]["latency_table"]
    assert lat["predicted_us_after"] <= 0.5 * (lat["predicted_us_before"] + 0.05) + 0.05 + 1e-6  # rounded to 0.1 us
    assert lat["threads"] == 1 and lat["quantization"] == "float32"


def test_compile_prune_latency_on_remote_profile_needs_a_table(tmp_path, capsys):
    src = tmp_path / "m.keras"
    two_branch_model().save(src)
    code, _, err = run(["compile", str(src), "--target", "rpi4", "--quantize", "float32", "--target-latency", "0.5",
                        "-o", str(tmp_path / "art")], capsys)
    assert code == 2 and "remote device" in err and "edgeprune latency-table" in err
    assert not (tmp_path / "art").exists()
    code, _, err = run(["compile", str(src), "--prune", "0.5", "--prune-latency", "0.5",
                        "-o", str(tmp_path / "art")], capsys)
    assert code == 2 and "at most one of" in err
