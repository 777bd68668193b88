"""``edgeprune demo`` trains, saves Keras 3, compiles float32 + int8 and verifies on real digits."""
from __future__ import annotations

import json
import zipfile

from helpers_models import invoke_cli


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo-out"
    code, result = invoke_cli(["demo", "-o", out, "--json"])
    assert code == 0, result.output
    summary = json.loads(result.stdout)
    with zipfile.ZipFile(out / "digits.keras") as zf:
        assert json.loads(zf.read("metadata.json"))["keras_version"].startswith("3.")
    assert summary["target"] == "x86-64" and summary["test_samples"] == 450
    rows = {r["quantization"]: r for r in summary["results"]}
    assert set(rows) == {"float32", "int8"}
    for mode, row in rows.items():
        assert row["keras_accuracy"] > 0.9, row
        assert row["tflite_accuracy"] > 0.9, row
        assert row["agreement"] >= (0.999 if mode == "float32" else 0.95), row
        assert row["latency_median_ms"] is None or row["latency_median_ms"] > 0
        manifest = json.loads((out / f"digits-x86-64-{mode}" / "manifest.json").read_text())
        assert manifest["source"]["flavour"] == "keras3"
        assert manifest["artifact"]["bytes"] == row["tflite_bytes"]
    assert rows["int8"]["tflite_bytes"] < rows["float32"]["tflite_bytes"] / 2


def test_demo_is_rerunnable_and_prints_a_table(tmp_path):
    out = tmp_path / "again"
    for _ in range(2):
        code, result = invoke_cli(["demo", "-o", out])
        assert code == 0, result.output
    assert "tflite acc" in result.output and "int8" in result.output
