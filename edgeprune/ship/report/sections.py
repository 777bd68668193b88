"""The report's content as neutral blocks, so HTML and Markdown say the same thing.

A section is ``(heading, [block, ...])``; a block is ``("text", str)``, ``("table", columns,
rows)`` or ``("figure", key)`` (a key of the collected figures; missing figures are skipped).
A table cell is a plain value or a ``Name``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Name:
    """A tensor or layer name cell: the writers show it shortened (fused TFLite names run to 255
    characters), the full name as the HTML tooltip; report.json keeps it whole."""

    full: str

    def __str__(self) -> str:
        return self.full


def _fmt_bytes(n) -> str:
    if n is None:
        return "–"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _fmt_percent(fraction) -> str:
    """An accuracy (a fraction in report.json) as the page prints it: percent, unit in the label."""
    return "–" if fraction is None else f"{100.0 * fraction:.2f}"


def build(data) -> list[tuple[str, list]]:
    r, m, info = data.report, data.manifest, data.info
    figs = {f.key for f in data.figures}
    out: list[tuple[str, list]] = []

    prof = m.get("profile") or {}
    q = m.get("quantization") or {}
    art = m.get("artifact") or {}
    summary = [
        ("target", prof.get("name")), ("quantization", f"{q.get('mode', '–')} (io {q.get('io', '–')})"),
        ("artifact", f"{art.get('file', 'model.tflite')}, {_fmt_bytes(art.get('bytes'))}"),
        ("sha256", art.get("sha256")),
        ("arena", f"{_fmt_bytes((r.get('arena') or {}).get('bytes'))} ({(r.get('arena') or {}).get('method', '–')})"),
        ("MACs (artifact)", _fmt(info.get("macs")) if info else "–"),
        ("source", f"{(m.get('source') or {}).get('path', '–')} ({(m.get('source') or {}).get('flavour', '–')})"),
        ("created", m.get("created")),
    ]
    out.append(("Summary", [("table", ["", ""], [(k, _fmt(v)) for k, v in summary])]))

    stages = r.get("stages") or []
    budgets = r.get("budgets") or []
    blocks = []
    if stages:
        blocks.append(("figure", "stages"))
    if budgets:
        blocks.append(("table", ["budget", "limit", "actual", "ok"],
                       [(b["budget"], _fmt(b["limit"]), _fmt(b["actual"]), _fmt(b["ok"])) for b in budgets]))
    if blocks:
        out.append(("Stages and budgets", blocks))

    pruning = r.get("pruning")
    if pruning:
        text = (f"MACs {_fmt(pruning.get('macs_before'))} → {_fmt(pruning.get('macs_after'))}, params "
                f"{_fmt(pruning.get('params_before'))} → {_fmt(pruning.get('params_after'))}; criterion "
                f"{pruning.get('criterion')}, {pruning.get('pruned_groups', '–')} of "
                f"{pruning.get('prunable_groups', '–')} prunable groups pruned.")
        rows = [(Name(layer["name"]), layer.get("class_name"), f"{layer['channels_before']} → {layer['channels_after']}",
                 f"{_fmt(layer['macs_before'])} → {_fmt(layer['macs_after'])}",
                 f"{_fmt(layer['params_before'])} → {_fmt(layer['params_after'])}") for layer in pruning.get("layers", [])]
        blocks = [("text", text), ("figure", "pruning"),
                  ("table", ["layer", "type", "channels", "MACs", "params"], rows)]
        if pruning.get("locked"):
            blocks.append(("text", "Locked groups: " + "; ".join(pruning["locked"])))
        out.append(("Pruning: before and after, per layer", blocks))

    if info:
        blocks = [("figure", "size"), ("figure", "compute"),
                  ("table", ["op", "count", "constant bytes", "MACs"],
                   [(op, n, _fmt_bytes(info["size_by_op"].get(op, 0)), _fmt(info["macs_by_op"].get(op, 0)))
                    for op, n in sorted(info["op_counts"].items(), key=lambda kv: -kv[1])])]
        xnn = info.get("xnnpack") or {}
        if xnn:
            fb = ", ".join(f"{k} ×{v}" for k, v in xnn.get("fallback_op_counts", {}).items()) or "none"
            blocks.append(("text", f"XNNPACK takes {xnn.get('delegated_count')} of {len(info['ops'])} ops in "
                                   f"{xnn.get('partitions')} partition(s); builtin kernels run: {fb}."))
        out.append(("Size and compute by op", blocks))
        if "quantization" in figs:
            rows = [(Name(t["name"]), t["dtype"], _fmt(t["quantization"].get("scale")),
                     _fmt(t["quantization"].get("zero_point")))
                    for t in info["tensors"] if not t["constant"] and t.get("quantization")]
            out.append(("Quantization per tensor", [("figure", "quantization"),
                                                     ("table", ["tensor", "dtype", "scale", "zero point"], rows)]))
        meta = info.get("metadata")
        if meta:
            rows = [("normalization", str(meta.get("normalization"))), ("input range", str(meta.get("input_range"))),
                    ("colour space", meta.get("color_space")),
                    ("labels", ", ".join((meta.get("labels") or [])[:20]) or "–")]
            out.append(("Embedded TFLite metadata", [("table", ["field", "value"], rows)]))

    kf = r.get("keep_float")
    qe = kf or r.get("quant_error")
    if qe:
        blocks = [("figure", "quant_error")]
        if kf:
            blocks.insert(0, ("text", kf.get("summary", "")))
            rows = [(Name(k["tensor"]), k.get("op"), _fmt(k.get("sqnr_db")), _fmt(k.get("drop_points_after")),
                     _fmt(k.get("bytes_added")), _fmt(k.get("latency_ms_added"))) for k in kf.get("steps", [])]
            if rows:
                blocks.append(("table", ["kept in float", "op", "SQNR dB (int8)", "drop after, pt",
                                         "bytes added", "latency added, ms"], rows))
        layers = qe.get("layers") or []
        worst = [x for x in layers if x.get("rank") is not None][:10]
        blocks.append(("table", ["rank", "tensor", "op", "error, % of range", "SQNR dB", "cosine"],
                       [(x.get("rank"), Name(x["tensor"]), x["op"],
                         _fmt(100 * x["rmse_over_range"] if x.get("rmse_over_range") is not None else None),
                         _fmt(x.get("sqnr_db")), _fmt(x.get("cosine"))) for x in worst]))
        degenerate = [x for x in layers if x.get("degenerate")]
        if degenerate:
            blocks.append(("text", f"{len(degenerate)} degenerate tensor(s), not ranked (edgeprune.quantize.quant_error):"))
            blocks.append(("table", ["tensor", "op", "scale", "why"],
                           [(Name(x["tensor"]), x["op"], _fmt(x.get("scale")), x["degenerate"]) for x in degenerate]))
        out.append(("Quantization error per layer (measured on the artifact)", blocks))

    gate = r.get("accuracy_gate")
    if gate:
        ci = gate.get("drop_ci95")
        rows = [("original accuracy, %", _fmt_percent(gate.get("reference_accuracy"))),
                ("artifact accuracy, %", _fmt_percent(gate.get("candidate_accuracy"))),
                ("drop, points", _fmt(gate.get("drop_points"))),
                ("95% interval of the drop", str(ci) if ci is not None else "–"),
                ("limit, points", _fmt(gate.get("max_drop_points"))), ("samples", _fmt(gate.get("samples"))),
                ("passed", _fmt(gate.get("passed")))]
        out.append(("Accuracy before and after", [("figure", "accuracy"), ("table", ["", ""], rows)]))

    bench = r.get("bench")
    if bench:
        rows = []
        for dev in bench.get("devices", []):
            for res in dev.get("results", []):
                s = res.get("steady") or {}
                rows.append((dev.get("host"), res.get("threads"), _fmt(s.get("p50_ms")), _fmt(s.get("p90_ms")),
                             _fmt(s.get("p99_ms")), _fmt(s.get("mean_ms")), _fmt(s.get("count"))))
        out.append(("Latency per device", [("figure", "latency"),
                                           ("table", ["device", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms",
                                                      "runs"], rows)]))

    if "layer_time" in figs:
        out.append(("Per-layer time against MACs", [("figure", "layer_time"),
                    ("text", "Times are the latency table's per-layer measurements on the target runtime.")]))

    search = r.get("search")
    if search:
        best = search.get("best") or {}
        out.append(("Search", [("figure", "pareto"), ("text",
                    f"{len(search.get('trials', []))} trials; shipped trial {search.get('shipped', best.get('number'))}: "
                    f"ratio {best.get('ratio')}, {best.get('criterion')}, {best.get('quantization')}, accuracy "
                    f"{_fmt_percent(best.get('accuracy'))} %, latency {_fmt(best.get('latency_ms'))} ms.")]))

    notes = list((pruning or {}).get("notes") or [])
    if notes:
        out.append(("Notes", [("text", n) for n in notes]))
    return out
