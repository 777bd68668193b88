"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Each function takes plain dicts from report.json / inspect and returns ``(title, png)`` or None
when its data is absent, so the HTML and Markdown writers just skip missing sections. PNG
metadata is stripped (matplotlib writes its home page into ``Software``), so the report holds
no network reference at all.
"""
from __future__ import annotations

import io

MAX_ROWS = 60  # bars per plot; tables in the report list everything
_COLORS = {"before": "#9aa5b1", "after": "#1f6feb", "bad": "#d1242f", "ok": "#1a7f37", "mark": "#bf8700"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1):]


def pruning_layers(pruning: dict | None):
    """Per-layer channels, MACs and params before/after pruning (grouped horizontal bars)."""
    layers = (pruning or {}).get("layers") or []
    if not layers:
        return None
    title = "Per-layer channels, MACs and parameters before/after pruning"
    if len(layers) > MAX_ROWS:  # keep the plot readable: the layers with the most MACs, in order
        keep = set(sorted(range(len(layers)), key=lambda i: -layers[i]["macs_before"])[:MAX_ROWS])
        layers = [layer for i, layer in enumerate(layers) if i in keep]
        title += f" ({MAX_ROWS} layers with the most MACs; all are in the table)"
    plt = _plt()
    names = [_short(layer["name"]) for layer in layers]
    height = max(2.5, 0.28 * len(layers) + 1.2)
    fig, axes = plt.subplots(1, 3, figsize=(13, height), sharey=True)
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
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Model before and after pruning, per layer")
    return title, _png(fig)


def size_breakdown(info: dict | None):
    """Constant bytes by op type and the largest constant tensors of the artifact."""
    if not info or not info.get("size_by_op"):
        return None
    plt = _plt()
    by_op = [(k, v) for k, v in info["size_by_op"].items() if v > 0]
    tensors = info.get("largest_tensors", [])[:12]
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.0, 0.3 * max(len(by_op), len(tensors)) + 1.5)),
                             gridspec_kw={"wspace": 0.9})  # room for the tensor names between the panels
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
    return "Artifact size by op and by tensor", _png(fig)


def compute(info: dict | None):
    """MACs of every op that has any, in execution order, coloured by who runs it (XNNPACK or builtin)."""
    ops = [o for o in (info or {}).get("ops", []) if o.get("macs")]
    if not ops:
        return None
    title = "MACs per op"
    if len(ops) > MAX_ROWS:
        keep = set(sorted(range(len(ops)), key=lambda i: -ops[i]["macs"])[:MAX_ROWS])
        ops = [o for i, o in enumerate(ops) if i in keep]
        title += f" ({MAX_ROWS} largest)"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, max(2.5, 0.28 * len(ops) + 1.2)))
    ax.barh([f"#{o['index']} {_short(o.get('output') or '', 34)} [{o['op']}]" for o in ops], [o["macs"] for o in ops],
            color=[_COLORS["after"] if o.get("xnnpack") else _COLORS["bad"] for o in ops])
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("multiply-accumulates per inference")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title + " (blue: run by XNNPACK, red: builtin kernel fallback)")
    return "Compute per op and who runs it", _png(fig)


def stages(report: dict | None):
    """Seconds spent in each compile stage."""
    rows = [(s.get("name"), s.get("seconds") or 0.0) for s in (report or {}).get("stages", [])]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=_COLORS["before"])
    ax.invert_yaxis()
    for i, (_, v) in enumerate(rows):
        ax.text(v, i, f" {v:.2f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_title(f"Compile stages ({sum(r[1] for r in rows):.1f} s in all)")
    ax.grid(axis="x", alpha=0.3)
    return "Time per compile stage", _png(fig)


def quantization(info: dict | None):
    """Activation scales per tensor (log) and the dtype mix of all tensors."""
    if not info:
        return None
    rows = [t for t in info.get("tensors", []) if not t["constant"] and t.get("quantization")
            and t["quantization"].get("scale")]
    if not rows:
        return None
    title = "Quantization per tensor"
    if len(rows) > MAX_ROWS:
        title += f" (first {MAX_ROWS} of {len(rows)} activation tensors; all are in the table)"
        rows = rows[:MAX_ROWS]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.0, 0.25 * len(rows) + 1.5)),
                             gridspec_kw={"width_ratios": [3, 1]})
    axes[0].barh([_short(t["name"], 40) + f" ({t['dtype']})" for t in rows],
                 [t["quantization"]["scale"] for t in rows], color=_COLORS["after"])
    axes[0].set_xscale("log")
    axes[0].invert_yaxis()
    axes[0].tick_params(axis="y", labelsize=7)
    axes[0].set_xlabel("scale (real value of one quantization step)")
    axes[0].set_title("Activation quantization per tensor")
    counts: dict[str, int] = {}
    for t in info.get("tensors", []):
        counts[t["dtype"]] = counts.get(t["dtype"], 0) + 1
    axes[1].bar(list(counts), list(counts.values()), color=_COLORS["before"])
    axes[1].set_title("Tensors by dtype")
    return title, _png(fig)


def accuracy(gate: dict | None):
    """Accuracy of the original model and the artifact, with the gate's limit and interval."""
    if not gate or gate.get("reference_accuracy") is None:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
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
    return "Accuracy before and after", _png(fig)


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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.5 * len(rows) + 1.2)))
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
    return "Latency per device", _png(fig)


def layer_time(rows: list[dict] | None):
    """Per-layer time (latency table) against MACs: where the time goes per MAC."""
    rows = [r for r in rows or [] if r.get("us") is not None and r.get("macs")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
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
    return "Per-layer time vs MACs", _png(fig)


def quant_error(qe: dict | None):
    """SQNR per tensor of the artifact against the float model, worst first."""
    layers = (qe or {}).get("layers") or []
    layers = [r for r in layers if r.get("sqnr_db") is not None][:25]
    if not layers:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, max(2.5, 0.28 * len(layers) + 1.2)))
    kept = set((qe or {}).get("kept_float", []))
    is_kept = [bool({r["tensor"], r.get("float_tensor")} & kept) for r in layers]
    labels = [_short(r["tensor"], 40) + f" [{r['op']}]" + (" → kept float" if k else "")
              for r, k in zip(layers, is_kept)]
    values = [r["sqnr_db"] for r in layers]
    ax.barh(labels, values, color=[_COLORS["mark"] if k else _COLORS["after"] for k in is_kept])
    for i, v in enumerate(values):
        ax.text(max(v, 0), i, f" {v:.1f} dB", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("SQNR, dB (higher is better)")
    ax.set_title("Quantization error per tensor, measured on the artifact (worst first)"
                 + ("\nof the all-int8 candidate; orange: kept in float by --keep-float auto" if kept else ""))
    ax.grid(axis="x", alpha=0.3)
    return "Per-layer quantization error", _png(fig)


def pareto(search: dict | None, shipped: int | None = None):
    """Accuracy against latency of every search trial; the Pareto front and the shipped point."""
    trials = [t for t in (search or {}).get("trials", []) if t.get("accuracy") is not None
              and t.get("latency_ms") is not None]
    if not trials:
        return None
    plt = _plt()
    front = set((search or {}).get("pareto", []))
    if shipped is None and (search or {}).get("best"):
        shipped = search["best"].get("number")
    fig, ax = plt.subplots(figsize=(8, 5))
    for feasible, marker, label in ((True, "o", "feasible"), (False, "x", "over budget")):
        pts = [t for t in trials if bool(t.get("feasible")) == feasible]
        if pts:
            ax.scatter([t["latency_ms"] for t in pts], [100 * t["accuracy"] for t in pts], marker=marker,
                       color=_COLORS["before"] if feasible else _COLORS["bad"], label=label)
    fr = sorted((t for t in trials if t.get("number") in front), key=lambda t: t["latency_ms"])
    if fr:
        ax.plot([t["latency_ms"] for t in fr], [100 * t["accuracy"] for t in fr], "-o", color=_COLORS["after"],
                label="Pareto front")
    ship = next((t for t in trials if t.get("number") == shipped), None)
    if ship is not None:
        ax.scatter([ship["latency_ms"]], [100 * ship["accuracy"]], s=250, marker="*", color=_COLORS["mark"],
                   zorder=5, label=f"shipped (trial {shipped})")
    ax.set_xlabel("latency, ms (p50)")
    ax.set_ylabel("accuracy, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Search: accuracy against latency")
    return "Search Pareto front", _png(fig)
