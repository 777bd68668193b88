"""compile's hooks for what ships beside the model: selective quantization, TFLite metadata,
labels, the reference sample, and report.html/report.md.

Kept out of edgeprune/pipelines/compile.py so the pipeline stays a list of stages: compile calls
``check_options`` early, ``keep_float`` after conversion, ``with_metadata`` before the checks,
``extra_files`` when it builds the manifest and ``write_extras`` inside the artifact's temp dir.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeprune.base.artifacts import sha256_bytes, write_bytes_atomic


def check_options(options, quant: str, profile, max_drop) -> None:
    from edgeprune.quantize.selective import check_keep_float

    check_keep_float(options.keep_float, quant, profile.operators.int8_only, max_drop)
    if options.labels is not None:
        from edgeprune.quantize.metadata import read_labels

        read_labels(options.labels)  # refuse a bad file before converting


def keep_float(model, original, tflite: bytes, representative, io: str, gate, max_drop, profile, out):
    from edgeprune.quantize.selective import keep_float_auto

    return keep_float_auto(model, original, tflite, representative=representative, io=io, gate_x=gate[0],
                           gate_y=gate[1], max_drop=max_drop, threads=profile.threads, output=out)


def with_metadata(tflite: bytes, model, profile, labels_path) -> bytes:
    """Embed input normalization (from the profile's preprocessing) and labels as TFLite metadata."""
    from edgeprune.quantize import metadata

    labels = metadata.read_labels(labels_path) if labels_path else None
    shape = tuple(int(d or 1) for d in model.inputs[0].shape)
    out_units = int(model.outputs[0].shape[-1] or 0)
    if labels and out_units and len(labels) != out_units:
        from edgeprune.base.errors import InputError

        raise InputError(f"--labels {labels_path}: {len(labels)} labels for a model with {out_units} outputs")
    meta = metadata.build_metadata(name=model.name, input_name=model.inputs[0].name, input_shape=shape,
                                   scale=tuple(profile.preprocessing.scale), color=profile.preprocessing.color,
                                   labels=labels, output_name=model.outputs[0].name)
    return metadata.embed(tflite, meta, labels)


def extra_files(tflite: bytes, manifest: dict, representative, labels_path) -> dict[str, bytes]:
    """reference_sample.npz (and labels.txt), recorded with their sha256 in ``manifest``."""
    from edgeprune.ship.verification import make_reference_sample

    files = {}
    if isinstance(representative, dict) or len(manifest["inputs"]) != 1 or len(manifest["outputs"]) != 1:
        # the sample's x/y arrays hold one input and one output; verify then checks hashes only
        manifest["reference_sample"] = {"skipped": "the model has several inputs or outputs"}
    else:
        data = None if representative is None else np.asarray(representative)
        raw, entry = make_reference_sample(tflite, data, manifest["outputs"], manifest["inputs"][0])
        files[entry["file"]] = raw
        manifest["reference_sample"] = entry
    if labels_path:
        from edgeprune.quantize.metadata import LABELS_FILE, read_labels

        text = ("\n".join(read_labels(labels_path)) + "\n").encode("utf-8")
        files[LABELS_FILE] = text
        manifest["labels"] = {"file": LABELS_FILE, "sha256": sha256_bytes(text)}
    return files


def write_extras(directory: Path, files: dict[str, bytes], out) -> None:
    """Write the extra files, then report.html / report.md from the report.json already there."""
    from edgeprune.ship.report import render_report

    for name, data in files.items():
        write_bytes_atomic(directory / name, data)
    with out.progress("Writing report.html and report.md"):
        render_report(directory)


def layer_latency(original, pruned, table) -> list[dict]:
    """Per-layer µs (from the latency table the pruning used) and MACs, before and after pruning.

    Table entries are keyed by the unpruned layer's signature, so both phases are read on the
    original graph: "after" uses the pruned model's channel counts (layer names are kept)."""
    from edgeprune.load.graph import trace
    from edgeprune.pruning.latency import signature
    from edgeprune.pruning.macs import full_counts, layer_macs

    graph = trace(original)
    after_graph = trace(pruned)
    before = full_counts(graph)
    after = dict(before)
    for key, t in graph.tensors.items():
        producer = after_graph.layers.get(t.producer)
        if producer is not None and producer.outputs:
            after[key] = after_graph.tensors[producer.outputs[0]].channels
    rows = []
    for phase, counts in (("before", before), ("after", after)):
        for name, node in graph.layers.items():
            us = table.node_us(signature(node, graph), node, graph, counts)
            if us is not None:
                rows.append({"name": name, "phase": phase, "macs": int(layer_macs(node, graph, counts)),
                             "us": round(float(us), 3)})
    return rows
