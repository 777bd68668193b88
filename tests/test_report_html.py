"""report.html / report.md written by compile, re-rendered by `edgeprune report`, and looked at
the way a person would: rendered by headless Chromium, screenshotted, and the pixels checked."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers_models import invoke_cli
from report_helpers import labelled_by, prunable_cnn

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")
PNG_IMG = re.compile(r'<img[^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
BLUE = np.array([0x1f, 0x6f, 0xeb])  # the "after" colour of the plots (edgeprune.ship.report.plots)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    model = prunable_cnn()
    model.save(root / "m.h5")
    x, y = labelled_by(model, 48)
    np.savez(root / "cal.npz", x=x, y=y)
    (root / "labels.txt").write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    out = root / "art"
    code, result = invoke_cli(["compile", root / "m.h5", "-o", out, "--target", SMALL_CPU, "--quantize", "int8",
                               "--calibration", root / "cal.npz", "--prune", "0.5", "--labels", root / "labels.txt",
                               "--max-accuracy-drop", "100", "--json"])
    assert code == 0, result.output
    return root, out


def _no_network(html: str) -> None:
    assert not re.search(r"https?://", html, re.IGNORECASE)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,")


def test_compile_writes_self_contained_html_and_markdown(compiled):
    _, out = compiled
    html = (out / "report.html").read_text()
    images = PNG_IMG.findall(html)
    assert len(images) >= 3  # pruning, size, quantization, accuracy
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    _no_network(html)
    report = json.loads((out / "report.json").read_text())
    for layer in report["pruning"]["layers"]:  # every pruned layer is in the page's table
        assert f"<td>{layer['name']}</td>" in html
    assert "Accuracy before and after" in html and "Pruning: before and after" in html
    md = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\((report_files/[a-z_]+\.png)\)", md)
    assert len(linked) == len(images)
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in linked)


def test_report_command_merges_bench_and_rerenders(compiled, tmp_path):
    _, out = compiled
    art = tmp_path / "art"
    shutil.copytree(out, art)
    code, bench = invoke_cli(["bench", art, "--runs", "5", "--warmup", "1", "--json"])
    assert code == 0, bench.output
    (tmp_path / "bench.json").write_text(bench.stdout)
    code, result = invoke_cli(["report", art, "--bench", tmp_path / "bench.json", "--json"])
    assert code == 0, result.output
    assert "latency" in json.loads(result.stdout)["figures"]
    assert json.loads((art / "report.json").read_text())["bench"]["devices"]
    html = (art / "report.html").read_text()
    assert "Latency per device" in html and len(PNG_IMG.findall(html)) >= 4
    assert (art / "report_files" / "latency.png").is_file()
    _no_network(html)


def test_report_command_refuses_a_non_artifact(tmp_path):
    code, result = invoke_cli(["report", tmp_path])
    assert code == 2 and "report.json" in str(result.exception)


@pytest.mark.skipif(_chromium() is None, reason="Chromium is installed by scripts/setup.sh --test")
def test_chromium_renders_the_plots(compiled, tmp_path):
    from PIL import Image

    _, out = compiled
    browser = _chromium()
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--user-data-dir=" + str(tmp_path / "profile"), "--blink-settings=imagesEnabled=true"]
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(PNG_IMG.findall(dom.stdout)) >= 2  # the parsed DOM holds the embedded plots
    shot = tmp_path / "shot.png"
    run = subprocess.run([browser, *flags, "--window-size=1200,2400", f"--screenshot={shot}", url],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")).astype(int)
    assert pixels.std() > 10  # not a blank page
    # The bars of the plots are drawn in the report's blue: only a rendered plot paints them.
    blue = np.all(np.abs(pixels - BLUE) < 12, axis=-1)
    assert blue.sum() > 2000, f"only {blue.sum()} plot-blue pixels in the screenshot"


@pytest.mark.slow
def test_latency_pruning_plots_time_against_macs(tmp_path):
    model = prunable_cnn()
    model.save(tmp_path / "m.h5")
    x, y = labelled_by(model, 16)
    np.savez(tmp_path / "cal.npz", x=x, y=y)
    out = tmp_path / "art"
    code, result = invoke_cli(["compile", tmp_path / "m.h5", "-o", out, "--target", SMALL_CPU,
                               "--calibration", tmp_path / "cal.npz", "--prune-latency", "0.95"])
    assert code == 0, result.output
    rows = json.loads((out / "report.json").read_text())["pruning"]["layer_latency"]
    names = {r["name"] for r in rows}
    assert {"conv1", "conv2"} <= names and {r["phase"] for r in rows} == {"before", "after"}
    assert all(r["us"] > 0 and r["macs"] > 0 for r in rows)
    html = (out / "report.html").read_text()
    assert "Per-layer time against MACs" in html and (out / "report_files" / "layer_time.png").is_file()


@pytest.mark.slow
def test_search_result_adds_the_pareto_plot(compiled, tmp_path):
    root, out = compiled
    art = tmp_path / "art"
    shutil.copytree(out, art)
    code, search = invoke_cli(["search", root / "m.h5", "--target", SMALL_CPU, "--val-data", root / "cal.npz",
                               "--ratios", "0,0.5", "--quantize", "float32", "--latency-runs", "3",
                               "-o", tmp_path / "search", "--json"])
    assert code == 0, search.output
    (tmp_path / "search.json").write_text(search.stdout)
    code, result = invoke_cli(["report", art, "--search", tmp_path / "search.json", "--json"])
    assert code == 0, result.output
    assert "pareto" in json.loads(result.stdout)["figures"]
    html = (art / "report.html").read_text()
    assert "Search Pareto front" in html and "shipped trial" in html
    _no_network(html)


def test_plain_float_compile_still_has_plots(tmp_path):
    """No pruning, no quantization, no gate: stages, size and compute are still drawn."""
    from helpers_models import tiny_keras3_cnn

    tiny_keras3_cnn().save(tmp_path / "k3.keras")
    code, result = invoke_cli(["compile", tmp_path / "k3.keras", "-o", tmp_path / "f32"])
    assert code == 0, result.output
    html = (tmp_path / "f32" / "report.html").read_text()
    assert len(PNG_IMG.findall(html)) >= 2
    _no_network(html)
