"""``edgeprune demo`` trains, saves Keras 3, prunes to half the MACs with fine-tuning and
distillation, compiles dense and pruned to float32 + int8, and benches/verifies all four on
test digits no step saw."""
from __future__ import annotations

import json
import zipfile

import pytest
from helpers_models import invoke_cli


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo-out"
    code, result = invoke_cli(["demo", "-o", out, "--json"])
    assert code == 0, result.output
    summary = json.loads(result.stdout)
    with zipfile.ZipFile(out / "digits.keras") as zf:
        assert json.loads(zf.read("metadata.json"))["keras_version"].startswith("3.")
    assert summary["target"] == "x86-64" and summary["test_samples"] == 450
    rows = {(r["model"], r["quantization"]): r for r in summary["results"]}
    assert set(rows) == {(m, q) for m in ("dense", "pruned") for q in ("float32", "int8")}
    for (model, mode), row in rows.items():
        lo, hi = row["accuracy_ci95"]
        assert row["accuracy"] > 0.9 and lo <= row["accuracy"] <= hi, row
        assert row["agreement"] >= (0.999 if (model, mode) == ("dense", "float32") else 0.9), row
        assert row["latency_median_ms"] is None or row["latency_median_ms"] > 0
        art = out / f"digits-{model}-x86-64-{mode}"
        manifest = json.loads((art / "manifest.json").read_text())
        report = json.loads((art / "report.json").read_text())
        assert manifest["source"]["flavour"] == "keras3"
        assert manifest["artifact"]["bytes"] == row["tflite_bytes"]
        if model == "pruned":  # the main job: pruned, recovered, gated on held-out digits
            assert report["pruning"]["macs_after"] <= 0.5 * report["pruning"]["macs_before"]
            assert report["training"]["recovery"]["method"] == "distillation"
            gate = report["accuracy_gate"]
            assert gate["passed"] and len(gate["drop_ci95"]) == 2 and gate["samples"] > 100
            assert row["macs"] == report["pruning"]["macs_after"] < rows[("dense", mode)]["macs"]
        else:
            assert "pruning" not in report
    for model in ("dense", "pruned"):
        assert rows[(model, "int8")]["tflite_bytes"] < rows[(model, "float32")]["tflite_bytes"] / 2
    assert rows[("pruned", "float32")]["tflite_bytes"] < rows[("dense", "float32")]["tflite_bytes"]


@pytest.mark.slow
def test_demo_is_rerunnable_and_prints_one_table(tmp_path):
    out = tmp_path / "again"
    for _ in range(2):
        code, result = invoke_cli(["demo", "-o", out])
        assert code == 0, result.output
    for text in ("acc % (95% CI)", "drop pts (95% CI)", "pruned ", "dense ", "int8", "float32", "MACs"):
        assert text in result.output, text
