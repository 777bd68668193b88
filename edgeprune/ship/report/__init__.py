"""report.html and report.md beside report.json (which stays the source of truth).

``render_report(DIR)`` reads DIR/report.json and DIR/manifest.json, inspects DIR/model.tflite
(edgeprune.quantize.inspection) for size and quantization facts, draws the figures
(edgeprune.ship.report.plots) and writes:

- ``report.html``: one self-contained file, figures embedded as base64 PNG, inline CSS, no
  script, font, stylesheet or link that needs a network;
- ``report.md`` with the figures beside it in ``report_files/`` (for pull requests).

compile calls it in its write step; ``edgeprune report DIR`` re-renders (optionally merging a
bench result or a search result into report.json first, so the HTML always derives from it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeprune.base.artifacts import write_bytes_atomic, write_json
from edgeprune.base.errors import InputError

ASSETS = "report_files"


@dataclass
class Figure:
    key: str
    title: str
    png: bytes
    layout: dict = field(default_factory=dict)  # measured on the drawn chart (edgeprune.ship.report.plots)


@dataclass
class ReportData:
    report: dict
    manifest: dict
    info: dict | None
    figures: list = field(default_factory=list)


def _load(path: Path, what: str, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise InputError(f"{path}: missing ({what})")
        return {}
    from edgeprune.base.artifacts import read_json_object

    return read_json_object(path)


def collect(directory: Path) -> ReportData:
    """Everything the writers need: the JSON files, the artifact's inspection and the figures."""
    from edgeprune.ship.report import plots

    report = _load(directory / "report.json", "the compile report")
    manifest = _load(directory / "manifest.json", "the artifact manifest", required=False)
    model = directory / (manifest.get("artifact", {}).get("file") or "model.tflite")
    info = None
    if model.is_file():
        from edgeprune.quantize.inspection import inspect_tflite

        info = inspect_tflite(model.read_bytes(), name=model.name)
    data = ReportData(report, manifest, info)
    search = report.get("search")
    makers = [
        ("pruning", lambda: plots.pruning_layers(report.get("pruning"))),
        ("stages", lambda: plots.stages(report)),
        ("size", lambda: plots.size_breakdown(info)),
        ("compute", lambda: plots.compute(info)),
        ("quantization", lambda: plots.quantization(info)),
        ("quant_error", lambda: plots.quant_error(report.get("keep_float") or report.get("quant_error"))),
        ("accuracy", lambda: plots.accuracy(report.get("accuracy_gate"))),
        ("latency", lambda: plots.latency(report.get("bench"))),
        ("layer_time", lambda: plots.layer_time((report.get("pruning") or {}).get("layer_latency"))),
        ("pareto", lambda: plots.pareto(search, (search or {}).get("shipped"))),
    ]
    for key, make in makers:
        made = make()
        if made is not None:
            data.figures.append(Figure(key, *made))
    return data


def render_report(directory, *, bench=None, search=None) -> dict:
    """Write report.html, report.md and report_files/*.png in ``directory``.

    ``bench``/``search``: a result dict or JSON path (``edgeprune bench --json``, ``search --json``)
    stored into report.json first, under "bench" / "search".
    """
    from edgeprune.ship.report import html, markdown

    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: not an artifact directory")
    report_path = d / "report.json"
    if bench is not None or search is not None:
        report = _load(report_path, "the compile report")
        for key, value in (("bench", bench), ("search", search)):
            if value is not None:
                report[key] = value if isinstance(value, dict) else _load(Path(value), f"--{key} result")
        write_json(report_path, report)
    data = collect(d)
    for fig in data.figures:
        write_bytes_atomic(d / ASSETS / f"{fig.key}.png", fig.png)
    assets = d / ASSETS
    if assets.is_dir():  # drop figures of sections that no longer exist
        keep = {f"{fig.key}.png" for fig in data.figures}
        for stale in assets.glob("*.png"):
            if stale.name not in keep:
                stale.unlink()
    page = html.render(data)
    write_bytes_atomic(d / "report.html", page.encode("utf-8"))
    write_bytes_atomic(d / "report.md", markdown.render(data, ASSETS).encode("utf-8"))
    _record_hashes(d)
    return {"html": str(d / "report.html"), "markdown": str(d / "report.md"),
            "figures": [f.key for f in data.figures], "html_bytes": len(page.encode("utf-8"))}


def report_files(directory: Path) -> list[str]:
    """The report's files, relative to the artifact directory."""
    names = [n for n in ("report.json", "report.html", "report.md") if (directory / n).is_file()]
    assets = directory / ASSETS
    if assets.is_dir():
        names += [f"{ASSETS}/{p.name}" for p in sorted(assets.glob("*.png"))]
    return names


def _record_hashes(directory: Path) -> None:
    """List the report files with their sha256 in manifest.json, so `edgeprune verify` checks them too
    (a re-render updates the list: the manifest always describes what the directory holds)."""
    from edgeprune.base.artifacts import sha256_bytes

    path = directory / "manifest.json"
    if not path.is_file():
        return
    manifest = _load(path, "the artifact manifest")
    manifest["report_files"] = [{"path": n, "sha256": sha256_bytes((directory / n).read_bytes())}
                                for n in report_files(directory)]
    write_json(path, manifest)
