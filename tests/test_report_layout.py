"""Plots and report.html that fit: the search's Pareto picture draws the 2-D front of its axes and
counts what it shows, charts keep at most ~20 bars, and a MobileNetV2 report opened in headless
Chromium at 1280 px has no horizontal overflow and no overlapping tick labels."""
from __future__ import annotations

import html as html_mod
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers_models import invoke_cli

from edgeprune.search import study as st
from edgeprune.ship.report import pareto as results
from edgeprune.ship.report import plots

SMALL_CPU = str(Path(__file__).parent / "data" / "small-cpu.yaml")


def _row(number, accuracy, latency, size, *, feasible=True, state="COMPLETE", same_as=None):
    """A trial row of edgeprune.search.study.rows(), with the fields the pictures read."""
    return {"number": number, "state": state, "params": {}, "ratio": None, "criterion": None, "quantization": None,
            "values": None, "accuracy": accuracy, "latency_ms": latency, "latency_source": "table",
            "model_bytes": size, "arena_bytes": None, "macs": None, "sha256": None, "device": None,
            "worker": None, "artifact": None, "feasible": feasible and state == "COMPLETE", "violations": [],
            "same_as": same_as, "error": None, "seconds": 1.0, "latency_measured": None}


def _trials():
    return [
        _row(0, 0.90, 10.0, 900),
        _row(1, 0.88, 6.0, 800),
        _row(2, 0.80, 7.0, 100),  # smallest: on the 3-objective front, dominated on accuracy x latency
        _row(3, 0.91, 14.0, 950),
        _row(4, 0.85, 6.5, 700),  # dominated by trial 1 on the plot, smaller than it: 3-D front too
        _row(5, 0.95, 3.0, 990, feasible=False),  # over a budget: not on any front
        _row(6, 0.90, 10.0, 900, same_as=0),  # duplicate of trial 0: left out
        _row(7, None, None, None, state="FAIL"),  # failed: left out
        _row(8, 0.89, 12.0, 990),  # dominated by trial 0 on every objective
    ]


def _front_line(fig):
    lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == results.FRONT_LINE_GID]
    assert len(lines) == 1
    return list(zip(lines[0].get_xdata(), lines[0].get_ydata()))


def test_pareto_picture_draws_the_2d_front_and_counts_what_it_shows(tmp_path):
    import matplotlib.pyplot as plt

    rows = _trials()
    front3 = st.pareto(rows)
    assert {2, 4} <= {r["number"] for r in front3}  # the premise: 3-D front members dominated in 2-D
    fig, drawn = results.pareto_figure(rows, front3, st.best(rows), {"target": "t", "sampler": "grid",
                                                                     "baseline": {"accuracy": 0.92}})
    # the line is exactly the feasible points no other feasible point beats on both axes
    pts = [(r["latency_ms"], 100 * r["accuracy"]) for r in rows if r["feasible"] and r["same_as"] is None]
    expected = sorted(p for p in set(pts)
                      if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts))
    assert expected == [(6.0, 88.0), (10.0, 90.0), (14.0, 91.0)]
    assert _front_line(fig) == expected == drawn["front_2d"]
    # the 3-objective front is marked apart (rings), one per member
    ax = fig.axes[0]
    offsets = {c.get_label(): len(c.get_offsets()) for c in ax.collections}
    assert offsets["within budgets"] == 6 and offsets["over a budget"] == 1
    assert offsets[f"front on accuracy, latency and size ({len(front3)})"] == len(front3)
    # the title counts what is drawn and says what was left out and why
    title = ax.get_title()
    assert "7 of 9 trials shown (6 within budgets, 1 over)" in title
    assert "1 duplicate" in title and "1 not completed" in title
    assert drawn["plotted"] == offsets["within budgets"] + offsets["over a budget"] == 7
    plt.close(fig)
    path = results.plot_pareto(rows, front3, st.best(rows), {"target": "t"}, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_picture_uses_size_without_latency_and_measured_latency_first():
    import matplotlib.pyplot as plt

    rows = [_row(0, 0.9, None, 900), _row(1, 0.8, None, 500), _row(2, 0.85, None, 950)]
    fig, drawn = results.pareto_figure(rows, st.pareto(rows), None, {})
    assert drawn["axis"] == "model_bytes" and _front_line(fig) == [(500, 80.0), (900, 90.0)]
    plt.close(fig)
    rows = [_row(0, 0.9, 10.0, 900), _row(1, 0.8, 5.0, 500)]
    rows[0]["latency_measured"] = {"latency_ms": 4.0}  # measured on the device: faster than trial 1
    fig, drawn = results.pareto_figure(rows, st.pareto(rows), None, {})
    assert _front_line(fig) == [(4.0, 90.0)]
    plt.close(fig)


def _info(n_ops: int, name_len: int = 255):
    """An inspect_tflite-shaped dict with ``n_ops`` convolutions named like fused TFLite tensors."""
    def name(i):
        return ";".join(f"model/block_{i}_part{j}/Conv2D" for j in range(40))[:name_len]

    ops = [{"index": i, "op": "CONV_2D", "output": name(i), "macs": 1000 * (i + 1), "xnnpack": i % 2 == 0}
           for i in range(n_ops)]
    tensors = [{"name": name(i), "dtype": "int8", "constant": False, "bytes": 64,
                "quantization": {"scale": 10.0 ** -(i % 9), "zero_point": 0}} for i in range(n_ops)]
    return {"ops": ops, "tensors": tensors, "size_by_op": {f"OP_{i}": 100 * (i + 1) for i in range(30)},
            "largest_tensors": [{"name": name(i), "bytes": 64, "dtype": "int8"} for i in range(12)]}


def test_charts_keep_at_most_20_bars_and_sum_the_rest():
    info = _info(64)
    for make in (plots.compute, plots.size_breakdown, plots.quantization):
        title, png, layout = make(info)
        assert png[:4] == b"\x89PNG"
        assert 0 < layout["bars"] <= plots.MAX_BARS and layout["label_overlaps"] == 0, (title, layout)
    kept = plots._largest_and_other(info["ops"], lambda o: o["macs"],
                                    lambda rest: {"macs": sum(o["macs"] for o in rest), "other": len(rest)})
    assert len(kept) == plots.MAX_BARS and kept[-1]["other"] == 64 - 19
    assert sum(o["macs"] for o in kept) == sum(o["macs"] for o in info["ops"])  # nothing lost
    assert [o["index"] for o in kept[:-1]] == list(range(45, 64))  # the largest, in model order
    layers = [{"name": f"layer_{i}", "channels_before": 16, "channels_after": 8, "macs_before": i + 1,
               "macs_after": i, "params_before": 10, "params_after": 5} for i in range(64)]
    _, _, layout = plots.pruning_layers({"layers": layers})
    assert layout["bars"] == plots.MAX_BARS and layout["label_overlaps"] == 0


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


PROBE = ("<script>document.body.setAttribute('data-scroll-width', document.documentElement.scrollWidth);"
         "document.body.setAttribute('data-client-width', document.documentElement.clientWidth);</script></body>")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Chromium is installed by scripts/setup.sh --test")
def test_mobilenet_report_fits_1280px_in_chromium(tmp_path):
    """A MobileNetV2 artifact (255-character fused tensor names, 64 ops): the page does not scroll
    sideways at 1280 px, every chart has at most 20 bars and no overlapping tick labels, and
    shortened names keep their full text in the tooltip and in inspect's JSON."""
    import keras

    import edgeprune

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=0.35, classes=10)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "cal.npy", np.random.default_rng(0).random((16, 96, 96, 3), dtype=np.float32))
    out = tmp_path / "art"
    edgeprune.compile(tmp_path / "m.keras", out, target=SMALL_CPU, quantize="int8",
                      calibration=str(tmp_path / "cal.npy"), num_samples=16, ratio=0.3)
    html = (out / "report.html").read_text()
    assert "<script" not in html.lower()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE))
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--user-data-dir=" + str(tmp_path / "profile"), "--window-size=1280,1000"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    width = int(re.search(r'data-scroll-width="(\d+)"', dom.stdout).group(1))
    client = int(re.search(r'data-client-width="(\d+)"', dom.stdout).group(1))
    assert client <= 1280 and width <= client, f"the page is {width} px wide in a {client} px window"
    figures = re.findall(r'<figure data-bars="(\d+)" data-label-overlaps="(\d+)"', dom.stdout)
    assert len(figures) >= 4  # pruning, stages, size, compute, quantization
    assert all(int(bars) <= 20 and int(overlaps) == 0 for bars, overlaps in figures), figures
    # long fused names: shortened on the page, whole in the tooltip and in inspect --json
    code, result = invoke_cli(["inspect", out, "--json"])
    assert code == 0, result.output
    long_names = [t["name"] for t in json.loads(result.stdout)["tensors"]
                  if not t["constant"] and len(t["name"]) > 120]
    assert long_names and max(len(n) for n in long_names) >= 200
    titles = {html_mod.unescape(t) for t in re.findall(r'<td title="([^"]*)">', html)}
    assert set(long_names) <= titles
    visible = {html_mod.unescape(c) for c in re.findall(r"<td[^>]*>([^<]*)</td>", html)}
    assert not visible & set(long_names)
    shortened = [html_mod.unescape(c) for c in re.findall(r'<td title="[^"]*">([^<]*)</td>', html)]
    assert shortened and max(len(c) for c in shortened) <= 48  # inspection.display_name's width
