"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes plain dicts from report.json / inspect and returns ``(title, png, layout)``
or None when its data is absent, so the HTML and Markdown writers just skip missing sections.
PNG metadata is stripped (matplotlib writes its home page into ``Software``), so the report holds
no network reference at all.

Readable at a glance: at most ``MAX_BARS`` bars per chart (the largest, in model order, and the
rest summed as one "other" bar; the tables list everything), figure height from the row count,
constrained layout, names shortened by edgeprune.quantize.inspection.display_name. ``layout`` is what
matplotlib actually drew, measured after drawing: ``bars`` (most bars in one series) and
``label_overlaps`` (pairs of tick labels whose boxes intersect); the page carries both as data
attributes, so a test checks the rendered charts and not the intent.
"""
from __future__ import annotations

import io

MAX_BARS = 20  # bars per chart, "other" included; tables in the report list everything
_COLORS = {"before": "#9aa5b1", "after": "#1f6feb", "bad": "#d1242f", "ok": "#1a7f37", "mark": "#bf8700"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> tuple[bytes, dict]:
    """(PNG bytes, layout facts measured on the drawn figure: see the module docstring)."""
    plt = _plt()
    fig.canvas.draw()
    layout = {"bars": _bars(fig), "label_overlaps": _label_overlaps(fig)}
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue(), layout


def _bars(fig) -> int:
    """Most bars in one series of any axes (grouped before/after bars count once per row)."""
    from matplotlib.container import BarContainer

    return max((len(c) for ax in fig.axes for c in ax.containers if isinstance(c, BarContainer)), default=0)


def _label_overlaps(fig) -> int:
    """Pairs of visible, non-empty tick labels of the same axis whose drawn boxes intersect."""
    renderer = fig.canvas.get_renderer()
    pairs = 0
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(renderer) for t in axis.get_ticklabels()
                     if t.get_visible() and t.get_text()]
            pairs += sum(1 for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b))
    return pairs


def _short(name: str, n: int = 28) -> str:
    from edgeprune.quantize.inspection import display_name

    return display_name(name, n)


def _rows_height(rows: int, per_row: float = 0.3, base: float = 1.4) -> float:
    """Figure height in inches for a bar chart of ``rows`` rows of 7-8 pt labels."""
    return max(2.5, per_row * rows + base)


def _largest_and_other(items: list, size, merge, n: int = MAX_BARS) -> list:
    """At most ``n`` items: the ``n - 1`` largest by ``size`` in their own order, then
    ``merge(rest)`` (one summed item) for all the others; all of them when they fit."""
    if len(items) <= n:
        return list(items)
    keep = set(sorted(range(len(items)), key=lambda i: -size(items[i]))[:n - 1])
    rest = [x for i, x in enumerate(items) if i not in keep]
    return [x for i, x in enumerate(items) if i in keep] + [merge(rest)]


def pruning_layers(pruning: dict | None):
    """Per-layer channels, MACs and params before/after pruning (grouped horizontal bars)."""
    layers = (pruning or {}).get("layers") or []
    if not layers:
        return None
    title = "Per-layer channels, MACs and parameters before/after pruning"
    if len(layers) > MAX_BARS:
        title += f" ({MAX_BARS - 1} layers with the most MACs, the other {len(layers) - MAX_BARS + 1} summed)"

    def merge(rest):  # MACs and parameters add up; channels of different layers do not (no bar)
        out = {"name": f"other ({len(rest)} layers)", "channels_before": float("nan"), "channels_after": float("nan")}
        for key in ("macs", "params"):
            for when in ("before", "after"):
                out[f"{key}_{when}"] = sum(layer[f"{key}_{when}"] for layer in rest)
        return out

    layers = _largest_and_other(layers, lambda layer: layer["macs_before"], merge)
    plt = _plt()
    names = [_short(layer["name"]) for layer in layers]
    fig, axes = plt.subplots(1, 3, figsize=(13, _rows_height(len(layers))), sharey=True, layout="constrained")
    y = list(range(len(layers)))
    for ax, key, label in zip(axes, ("channels", "macs", "params"), ("output channels", "MACs", "parameters")):
        before = [layer[f"{key}_before"] for layer in layers]
        after = [layer[f"{key}_after"] for layer in layers]
        ax.barh([v - 0.2 for v in y], before, height=0.4, color=_COLORS["before"], label="before")
        ax.barh([v + 0.2 for v in y], after, height=0.4, color=_COLORS["after"], label="after")
        ax.set_xlabel(label)
        if key != "channels" and max(before + [1]) / max(min([b for b in before if b] or [1]), 1) > 100:
            ax.set_xscale("log")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper right", ncols=2, fontsize=8)
    fig.suptitle("Model before and after pruning, per layer")
    return (title, *_png(fig))


def size_breakdown(info: dict | None):
    """Constant bytes by op type and the largest constant tensors of the artifact."""
    if not info or not info.get("size_by_op"):
        return None
    plt = _plt()
    by_op = _largest_and_other([(k, v) for k, v in info["size_by_op"].items() if v > 0], lambda kv: kv[1],
                               lambda rest: (f"other ({len(rest)} ops)", sum(v for _, v in rest)))
    tensors = info.get("largest_tensors", [])[:12]
    fig, axes = plt.subplots(1, 2, figsize=(13, _rows_height(max(len(by_op), len(tensors)))),
                             layout="constrained")
    axes[0].barh([k for k, _ in by_op], [v / 1024 for _, v in by_op], color=_COLORS["after"])
    axes[0].invert_yaxis()
    axes[0].set_xlabel("KiB of weights/constants")
    axes[0].set_title("Size by op type")
    axes[1].barh([_short(t["name"], 36) + f" ({t['dtype']})" for t in tensors],
                 [t["bytes"] / 1024 for t in tensors], color=_COLORS["before"])
    axes[1].invert_yaxis()
    axes[1].set_xlabel("KiB")
    axes[1].set_title("Largest constant tensors")
    for ax in axes:
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    return ("Artifact size by op and by tensor", *_png(fig))


def compute(info: dict | None):
    """MACs of every op that has any, in execution order, coloured by who runs it (XNNPACK or builtin)."""
    ops = [o for o in (info or {}).get("ops", []) if o.get("macs")]
    if not ops:
        return None
    title = "MACs per op"
    if len(ops) > MAX_BARS:
        title += f" ({MAX_BARS - 1} largest of {len(ops)}, the rest summed)"
    ops = _largest_and_other(ops, lambda o: o["macs"], lambda rest: {
        "label": f"other ({len(rest)} ops)", "macs": sum(o["macs"] for o in rest), "other": True})
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, _rows_height(len(ops))), layout="constrained")
    ax.barh([o["label"] if o.get("other") else f"#{o['index']} {_short(o.get('output') or '', 34)} [{o['op']}]"
             for o in ops], [o["macs"] for o in ops],
            color=[_COLORS["before"] if o.get("other") else _COLORS["after"] if o.get("xnnpack") else _COLORS["bad"]
                   for o in ops])
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("multiply-accumulates per inference")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title + "\nblue: run by XNNPACK, red: builtin kernel fallback, grey: other ops", fontsize=10)
    return ("Compute per op and who runs it", *_png(fig))


def stages(report: dict | None):
    """Seconds spent in each compile stage."""
    rows = [(s.get("name"), s.get("seconds") or 0.0) for s in (report or {}).get("stages", [])]
    if not rows:
        return None
    plt = _plt()
    rows = _largest_and_other(rows, lambda r: r[1], lambda rest: (f"other ({len(rest)} stages)",
                                                                  sum(r[1] for r in rest)))
    fig, ax = plt.subplots(figsize=(8, _rows_height(len(rows), 0.35, 1.2)), layout="constrained")
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=_COLORS["before"])
    ax.invert_yaxis()
    for i, (_, v) in enumerate(rows):
        ax.text(v, i, f" {v:.2f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_title(f"Compile stages ({sum(r[1] for r in rows):.1f} s in all)")
    ax.grid(axis="x", alpha=0.3)
    return ("Time per compile stage", *_png(fig))


def quantization(info: dict | None):
    """How the activation scales spread (a histogram of log10 scale over every activation tensor:
    one bar per decade bin, however many tensors) and the dtype mix of all tensors. Scales far
    below the rest are the degenerate tensors edgeprune.quantize.quant_error sets apart."""
    if not info:
        return None
    rows = [t for t in info.get("tensors", []) if not t["constant"] and t.get("quantization")
            and t["quantization"].get("scale")]
    if not rows:
        return None
    import numpy as np

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=[3, 1], layout="constrained")
    logs = np.log10([t["quantization"]["scale"] for t in rows])
    lo, hi = float(np.floor(logs.min())), float(np.ceil(logs.max()))
    bins = np.linspace(lo, max(hi, lo + 1), min(MAX_BARS, max(int(2 * (hi - lo)), 1)) + 1)
    axes[0].hist(logs, bins=bins, color=_COLORS["after"], edgecolor="white")
    axes[0].set_xlabel("log10 of the scale (real value of one quantization step)")
    axes[0].set_ylabel("activation tensors")
    axes[0].set_title(f"Activation scales of all {len(rows)} quantized activation tensors (each in the table)",
                      fontsize=10)
    axes[0].grid(axis="y", alpha=0.3)
    counts: dict[str, int] = {}
    for t in info.get("tensors", []):
        counts[t["dtype"]] = counts.get(t["dtype"], 0) + 1
    counts = dict(_largest_and_other(sorted(counts.items(), key=lambda kv: -kv[1]), lambda kv: kv[1],
                                     lambda rest: ("other", sum(v for _, v in rest)), n=8))
    axes[1].barh(list(counts), list(counts.values()), color=_COLORS["before"])
    axes[1].invert_yaxis()
    axes[1].set_xlabel("tensors")
    axes[1].set_title("Tensors by dtype", fontsize=10)
    return ("Quantization per tensor", *_png(fig))


def accuracy(gate: dict | None):
    """Accuracy of the original model and the artifact, with the gate's limit and interval."""
    if not gate or gate.get("reference_accuracy") is None:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    ref, cand = 100 * gate["reference_accuracy"], 100 * gate["candidate_accuracy"]
    axes[0].bar(["original (Keras)", "artifact (.tflite)"], [ref, cand],
                color=[_COLORS["before"], _COLORS["ok"] if gate.get("passed", True) else _COLORS["bad"]])
    for i, v in enumerate((ref, cand)):
        axes[0].text(i, v, f"{v:.2f}%", ha="center", va="bottom")
    axes[0].set_ylim(max(0, min(ref, cand) - 10), 100)
    axes[0].set_ylabel(f"top-1 accuracy, % ({gate.get('samples')} samples)")
    drop = gate.get("drop_points", ref - cand)
    ci = gate.get("drop_ci95")
    err = None
    if isinstance(ci, (int, float)) and not isinstance(ci, bool):  # a half-width
        err = [[abs(ci)], [abs(ci)]]
    elif isinstance(ci, (list, tuple)) and len(ci) == 2:
        err = [[max(drop - ci[0], 0)], [max(ci[1] - drop, 0)]]
    elif isinstance(ci, dict) and "low" in ci:
        err = [[max(drop - ci["low"], 0)], [max(ci["high"] - drop, 0)]]
    axes[1].errorbar([0], [drop], yerr=err, fmt="o", capsize=8, color=_COLORS["after"],
                     label="drop" + (" (95% interval)" if err else ""))
    if gate.get("max_drop_points") is not None:
        axes[1].axhline(gate["max_drop_points"], color=_COLORS["bad"], linestyle="--",
                        label=f"limit {gate['max_drop_points']:g} pt")
    axes[1].axhline(0, color="black", linewidth=0.5)
    axes[1].set_xticks([])
    axes[1].set_ylabel("accuracy drop, points")
    axes[1].legend(fontsize=8)
    fig.suptitle("Accuracy gate: " + ("passed" if gate.get("passed", True) else "FAILED"))
    return ("Accuracy before and after", *_png(fig))


def latency(bench: dict | None):
    """Latency distribution per device and thread count (min, p50, p90, p99, max; mean ± std)."""
    rows = []
    for dev in (bench or {}).get("devices", []):
        for r in dev.get("results", []):
            s = r.get("steady") or {}
            if s.get("count"):
                rows.append((f"{dev.get('host', 'device')} · {r.get('threads')} thr", s))
    if not rows:
        return None
    rows = rows[:MAX_BARS]  # one box per device and thread count; the table lists them all
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, _rows_height(len(rows), 0.5, 1.2)), layout="constrained")
    # The runner reports percentiles, not raw times: box p50..p90, whiskers min..p99, max as a flier.
    stats = [{"label": name, "whislo": s["min_ms"], "q1": s["p50_ms"], "med": s["p50_ms"], "q3": s["p90_ms"],
              "whishi": s.get("p99_ms", s["max_ms"]), "fliers": [s["max_ms"]]} for name, s in rows]
    ax.bxp(stats, orientation="horizontal", showfliers=True)
    for i, (_, s) in enumerate(rows, 1):
        ax.plot([s["mean_ms"]], [i], "D", color=_COLORS["mark"], markersize=5)
    lo = min(s["min_ms"] for _, s in rows)
    if lo > 0 and max(s["max_ms"] for _, s in rows) / lo > 20:
        ax.set_xscale("log")
    ax.set_xlabel("ms per inference (box: p50..p90, whiskers: min..p99, ◇ mean, ○ max)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Latency distribution per device")
    return ("Latency per device", *_png(fig))


def layer_time(rows: list[dict] | None):
    """Per-layer time (latency table) against MACs: where the time goes per MAC."""
    rows = [r for r in rows or [] if r.get("us") is not None and r.get("macs")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for phase, color in (("before", _COLORS["before"]), ("after", _COLORS["after"])):
        pts = [r for r in rows if r.get("phase", "after") == phase]
        if pts:
            ax.scatter([r["macs"] for r in pts], [r["us"] for r in pts], color=color, label=phase, alpha=0.8)
    worst = sorted(rows, key=lambda r: -r["us"] / max(r["macs"], 1))[:5]
    for r in worst:
        ax.annotate(_short(r["name"], 20), (r["macs"], r["us"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("MACs")
    ax.set_ylabel("µs (latency table)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Per-layer time against MACs")
    return ("Per-layer time vs MACs", *_png(fig))


def quant_error(qe: dict | None):
    """Error per tensor of the artifact against the float model, as % of the tensor's float range,
    worst first (edgeprune.quantize.quant_error's ranking; degenerate tensors are not ranked, so not here)."""
    ranked = [r for r in (qe or {}).get("layers") or [] if r.get("rank") is not None
              and r.get("rmse_over_range") is not None]
    if not ranked:
        return None
    layers = sorted(ranked, key=lambda r: r["rank"])[:MAX_BARS]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, _rows_height(len(layers))), layout="constrained")
    kept = set((qe or {}).get("kept_float", []))
    is_kept = [bool({r["tensor"], r.get("float_tensor")} & kept) for r in layers]
    labels = [_short(r["tensor"], 40) + f" [{r['op']}]" + (" → kept float" if k else "")
              for r, k in zip(layers, is_kept)]
    values = [100 * r["rmse_over_range"] for r in layers]
    ax.barh(labels, values, color=[_COLORS["mark"] if k else _COLORS["after"] for k in is_kept])
    for i, (v, r) in enumerate(zip(values, layers)):
        sqnr = r.get("sqnr_db")
        ax.text(v, i, f" {v:.2g} %" + (f", {sqnr:.1f} dB" if sqnr is not None else ""), va="center", fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("RMSE, % of the tensor's float range (lower is better)")
    more = f" ({len(layers)} worst of {len(ranked)})" if len(ranked) > len(layers) else ""
    ax.set_title("Quantization error per tensor, measured on the artifact, worst first" + more
                 + ("\nof the all-int8 candidate; orange: kept in float by --keep-float auto" if kept else ""),
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return ("Per-layer quantization error", *_png(fig))


def pareto(search: dict | None, shipped: int | None = None):
    """The search's picture (edgeprune.ship.report.pareto.pareto_figure) with the shipped trial starred."""
    search = search or {}
    trials = search.get("trials") or []
    if not any(t.get("accuracy") is not None for t in trials):
        return None
    from edgeprune.ship.report.pareto import pareto_figure

    if shipped is None and search.get("best"):
        shipped = search["best"].get("number")
    front = set(search.get("pareto", []))
    fig, _ = pareto_figure(trials, [t for t in trials if t.get("number") in front],
                           next((t for t in trials if t.get("number") == shipped), None), search,
                           chosen_label="shipped")
    return ("Search Pareto front", *_png(fig))
