"""The messages a user reads: each names the file and the real cause, in one line.

``compile --from-study`` with a model that is not the searched one, corrupt ``.tar.gz``
bundles, and the accuracy units (fractions in JSON, percentage points for drops, % on screen).
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers_models import digits_like, invoke_cli, tiny_tf_keras_cnn

from edgeprune.base.errors import InputError
from edgeprune.load.model_io import sha256_file

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A one-trial grid study over ``model.h5`` (float32, unpruned: the cheapest real study)."""
    root = tmp_path_factory.mktemp("study")
    tiny_tf_keras_cnn(seed=0).save(root / "model.h5")
    tiny_tf_keras_cnn(seed=1).save(root / "other.h5")
    np.savez(root / "val.npz", x=digits_like(40), y=np.arange(40) % 10)
    code, result = invoke_cli(["search", root / "model.h5", "--val-data", root / "val.npz", "--target", SMALL_CPU,
                               "--sampler", "grid", "--ratios", "0", "--quantize", "float32", "--latency-runs", "2",
                               "--final-epochs", "0", "--study-name", "one", "--output", root / "s"])
    assert code == 0, result.output
    return root, f"sqlite:///{root / 's' / 'study.db'}", "one", result.output


def _from_study(storage, name, out, *model):
    return invoke_cli(["compile", "--from-study", storage, "--study-name", name, *model, "-o", out])


def test_from_study_with_the_searched_model_changed_in_place(study, tmp_path):
    root, storage, name, _ = study
    model = root / "model.h5"
    searched = sha256_file(model)
    saved = tmp_path / "saved.h5"
    shutil.copy(model, saved)
    try:
        shutil.copy(root / "other.h5", model)  # retrained at the same path since the search
        for given in ((), (model,)):  # the study's own path, or the same path given as MODEL
            code, result = _from_study(storage, name, tmp_path / "out", *given)
            assert code == 2, result.output
            msg = str(result.exception)
            assert msg == (f"{model}: changed since study '{name}' searched it (sha256 {searched[:12]} when "
                           f"searched, {sha256_file(model)[:12]} now); restore that model or search again")
    finally:
        shutil.copy(saved, model)
    assert not (tmp_path / "out").exists()


def test_from_study_with_a_different_model_names_both(study, tmp_path):
    root, storage, name, _ = study
    code, result = _from_study(storage, name, tmp_path / "out", root / "other.h5")
    assert code == 2
    msg = str(result.exception)
    assert msg.startswith(f"{root / 'other.h5'}: a different model from the one study '{name}' searched, "
                          f"{(root / 'model.h5').resolve()}")
    assert f"sha256 {sha256_file(root / 'model.h5')[:12]}; this file {sha256_file(root / 'other.h5')[:12]}" in msg


def test_from_study_accepts_a_copy_of_the_searched_model(study, tmp_path):
    from edgeprune.search.ship import options_from_study

    root, storage, name, _ = study
    copy = tmp_path / "copy.h5"
    shutil.copy(root / "model.h5", copy)
    model_path, _, row = options_from_study(storage, name, model=str(copy))
    assert model_path == str(copy.resolve()) and row["number"] == 0


# --- corrupt bundles -----------------------------------------------------------------------------

def _bundle_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = np.random.default_rng(0).bytes(60_000)  # incompressible: a flip lands in member data
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _flipped(raw: bytes) -> bytes:
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 0xFF
    return bytes(bad)


@pytest.mark.parametrize("name, content, cause", [
    ("truncated", lambda raw: raw[: len(raw) // 2], "corrupt archive (Compressed file ended"),
    ("flipped", _flipped, "corrupt archive (CRC check failed"),
    ("garbage", lambda raw: b"\x1f\x8b" + bytes(range(256)) * 2, "not a readable tar archive"),
    ("text", lambda raw: b"not an archive at all\n" * 40, "not a readable tar archive"),
    ("empty", lambda raw: b"", "not a readable tar archive (empty file)"),
    ("gzip-not-tar", lambda raw: gzip.compress(b"x" * 1000), "not a readable tar archive"),
    ("trailing", lambda raw: gzip.compress(gzip.decompress(raw) + bytes(2 << 20)), "after the end of the tar"),
])
@pytest.mark.parametrize("command", ["unpack", "verify"])
def test_corrupt_bundle_is_one_line_naming_the_file(tmp_path, name, content, cause, command):
    bundle = tmp_path / f"{name}.tar.gz"
    bundle.write_bytes(content(_bundle_bytes()))
    args = [command, bundle] + (["-o", tmp_path / "out"] if command == "unpack" else [])
    code, result = invoke_cli(args)
    assert code == 2 and isinstance(result.exception, InputError), result.output
    msg = str(result.exception)
    assert msg.startswith(f"{bundle}: ") and cause in msg and "\n" not in msg
    assert "ReadError" not in msg and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_intact_bundle_still_unpacks(tmp_path):
    bundle = tmp_path / "ok.tar.gz"
    bundle.write_bytes(_bundle_bytes())
    code, result = invoke_cli(["unpack", bundle, "-o", tmp_path / "out", "--json"])
    assert code == 0, result.output
    assert json.loads(result.stdout)["files"] == ["manifest.json"]


# --- accuracy units: fractions in JSON, points for drops, percent on screen -----------------------

def test_accuracy_is_a_fraction_in_json_and_percent_on_screen(tmp_path):
    import re

    tiny_tf_keras_cnn().save(tmp_path / "tiny.h5")
    np.savez(tmp_path / "cal.npz", x=digits_like(40), y=np.arange(40) % 10)
    args = ["compile", tmp_path / "tiny.h5", "--calibration", tmp_path / "cal.npz", "--quantize", "int8",
            "--max-accuracy-drop", "100"]
    code, result = invoke_cli([*args, "-o", tmp_path / "j", "--json"])
    assert code == 0, result.output
    gate = json.loads(result.stdout)["accuracy_gate"]
    assert 0.0 <= gate["candidate_accuracy"] <= 1.0 and 0.0 <= gate["reference_accuracy"] <= 1.0
    drop = 100.0 * (gate["reference_accuracy"] - gate["candidate_accuracy"])
    assert gate["drop_points"] == pytest.approx(drop, abs=1e-6) and gate["max_drop_points"] == 100.0
    code, result = invoke_cli([*args, "-o", tmp_path / "h"])
    assert code == 0, result.output
    line = re.search(r"artifact (\d+\.\d\d)% vs original (\d+\.\d\d)%", result.output)
    assert line and float(line.group(1)) == pytest.approx(100 * gate["candidate_accuracy"], abs=0.01)
    page = (tmp_path / "h" / "report.md").read_text()
    assert "artifact accuracy, %" in page and f"{100 * gate['candidate_accuracy']:.2f}" in page


def test_search_table_prints_accuracy_in_percent_with_the_unit_in_the_header(study):
    import re

    root, _, _, output = study
    results = json.loads((root / "s" / "results.json").read_text())
    baseline = results["baseline"]["accuracy"]
    assert 0.0 <= baseline <= 1.0 and all(0.0 <= t["accuracy"] <= 1.0 for t in results["trials"])
    assert f"unpruned accuracy {baseline:.2%}" in output
    assert "accuracy %" in output and re.search(r"-> accuracy \d+\.\d\d%", output)
