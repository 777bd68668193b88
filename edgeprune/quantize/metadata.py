"""TFLite metadata (the standard ``TFLITE_METADATA`` schema): input normalization and labels.

Apps and LiteRT's metadata tooling (tflite-support's MetadataDisplayer, the Task library,
Android Studio's model binding) read the input's normalization and the output's labels from
the model itself. tflite-support cannot be a dependency (it pins protobuf<4, TensorFlow 2.21
needs protobuf 5+), so the writer uses the schema compiled by flatc, vendored in
``edgeprune/_vendor/tflite_metadata_schema.py``, and does what tflite-support's
MetadataPopulator does: the metadata flatbuffer (identifier ``M001``) goes into a new model
buffer named ``TFLITE_METADATA``, and associated files (labels.txt) are appended to the model
as a zip archive. The interpreter ignores both.
"""
from __future__ import annotations

import io
import zipfile

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
# Only NormalizationOptions, ImageProperties, Stats and TENSOR_AXIS_LABELS are used: all in 1.0.
MIN_PARSER_VERSION = "1.0.0"


def _schemas():
    from edgeprune._vendor import tflite_metadata_schema as meta_fb
    from edgeprune.quantize.convert import _schema

    return _schema(), meta_fb


def normalization_for(scale: tuple[float, float]) -> tuple[float, float]:
    """(mean, std) such that (pixel - mean) / std maps [0, 255] onto ``scale`` (profile preprocessing)."""
    lo, hi = float(scale[0]), float(scale[1])
    std = 255.0 / (hi - lo)
    return -lo * std + 0.0, std  # + 0.0: no -0.0 in the metadata


def read_labels(path) -> list[str]:
    from pathlib import Path

    from edgeprune.base.errors import InputError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--labels {p}: cannot read it as UTF-8 text ({exc})") from None
    labels = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not labels:
        raise InputError(f"--labels {p}: no labels (one per line expected)")
    return labels


def build_metadata(*, name: str, input_name: str, input_shape, scale, color: str, labels=None,
                   output_name: str = "output", description: str = "") -> bytes:
    """The ``M001`` metadata flatbuffer for one image/tensor input and one output."""
    _, m = _schemas()
    mean, std = normalization_for(scale)
    inp = m.TensorMetadataT()
    inp.name = input_name
    inp.description = f"Input: pixels in [0, 255] are normalized as (x - {mean:g}) / {std:g}."
    channels = int(input_shape[-1]) if len(input_shape) == 4 else 0
    if channels in (1, 3):
        props = m.ImagePropertiesT()
        props.colorSpace = m.ColorSpaceType.GRAYSCALE if color == "grayscale" or channels == 1 else m.ColorSpaceType.RGB
        inp.content = m.ContentT()
        inp.content.contentPropertiesType = m.ContentProperties.ImageProperties
        inp.content.contentProperties = props
    else:
        inp.content = m.ContentT()
        inp.content.contentPropertiesType = m.ContentProperties.FeatureProperties
        inp.content.contentProperties = m.FeaturePropertiesT()
    norm = m.NormalizationOptionsT()
    norm.mean, norm.std = [mean], [std]
    unit = m.ProcessUnitT()
    unit.optionsType = m.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    inp.processUnits = [unit]
    stats = m.StatsT()
    stats.min, stats.max = [float(scale[0])], [float(scale[1])]
    inp.stats = stats

    out = m.TensorMetadataT()
    out.name = output_name
    out.description = "Scores of each class." if labels else "Model output."
    out.content = m.ContentT()
    out.content.contentPropertiesType = m.ContentProperties.FeatureProperties
    out.content.contentProperties = m.FeaturePropertiesT()
    if labels:
        f = m.AssociatedFileT()
        f.name = LABELS_FILE
        f.description = "Labels of the output classes, one per line."
        f.type = m.AssociatedFileType.TENSOR_AXIS_LABELS
        out.associatedFiles = [f]

    sub = m.SubGraphMetadataT()
    sub.inputTensorMetadata = [inp]
    sub.outputTensorMetadata = [out]
    model = m.ModelMetadataT()
    model.name = name
    model.description = description or "Compiled by edgeprune."
    model.version = "1"
    model.author = "edgeprune"
    model.subgraphMetadata = [sub]
    model.minParserVersion = MIN_PARSER_VERSION
    import flatbuffers

    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), METADATA_IDENTIFIER)
    return bytes(b.Output())


def embed(tflite: bytes, metadata: bytes, labels: list[str] | None = None) -> bytes:
    """``tflite`` with ``metadata`` as its TFLITE_METADATA buffer and labels.txt appended (zip)."""
    import flatbuffers

    fb, _ = _schemas()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(tflite, 0))
    buf = fb.BufferT()
    buf.data = list(metadata)
    model.metadata = [e for e in (model.metadata or []) if (e.name or b"").decode() != METADATA_NAME]
    model.buffers = model.buffers or []
    model.buffers.append(buf)
    entry = fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    b = flatbuffers.Builder(max(1024, len(tflite) + len(metadata) + 1024))
    b.Finish(model.Pack(b), b"TFL3")
    out = bytes(b.Output())
    if labels:
        sink = io.BytesIO()
        sink.write(out)
        with zipfile.ZipFile(sink, "a") as zf:
            zf.writestr(LABELS_FILE, "\n".join(labels) + "\n")
        out = sink.getvalue()
    return out


def metadata_buffer(tflite: bytes) -> bytes | None:
    """The raw M001 metadata flatbuffer of a model, or None."""
    fb, _ = _schemas()
    model = fb.Model.GetRootAsModel(tflite, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode() == METADATA_NAME:
            return model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    return None


def read_metadata(tflite: bytes) -> dict | None:
    """Name, normalization, stats, colour space and labels from a model's metadata (None if absent)."""
    raw = metadata_buffer(tflite)
    if raw is None:
        return None
    _, m = _schemas()
    if not m.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
        return {"error": "TFLITE_METADATA buffer without the M001 identifier"}
    meta = m.ModelMetadataT.InitFromObj(m.ModelMetadata.GetRootAsModelMetadata(raw, 0))
    sub = meta.subgraphMetadata[0] if meta.subgraphMetadata else None
    result = {"name": _s(meta.name), "version": _s(meta.version), "min_parser_version": _s(meta.minParserVersion)}
    if sub is not None and sub.inputTensorMetadata:
        t = sub.inputTensorMetadata[0]
        for unit in t.processUnits or []:
            if unit.optionsType == m.ProcessUnitOptions.NormalizationOptions:
                result["normalization"] = {"mean": [float(v) for v in unit.options.mean],
                                           "std": [float(v) for v in unit.options.std]}
        if t.stats is not None and t.stats.min is not None:
            result["input_range"] = [float(t.stats.min[0]), float(t.stats.max[0])]
        if t.content is not None and t.content.contentPropertiesType == m.ContentProperties.ImageProperties:
            result["color_space"] = {v: k for k, v in vars(m.ColorSpaceType).items()
                                     if not k.startswith("_")}.get(t.content.contentProperties.colorSpace)
    names = []
    if sub is not None:
        for t in sub.outputTensorMetadata or []:
            names += [_s(f.name) for f in t.associatedFiles or []]
    if names:
        try:
            with zipfile.ZipFile(io.BytesIO(tflite)) as zf:
                if LABELS_FILE in zf.namelist():
                    result["labels"] = zf.read(LABELS_FILE).decode("utf-8").splitlines()
        except zipfile.BadZipFile:
            result["labels_error"] = "labels.txt is listed but no zip archive is appended"
    return result


def _s(value) -> str | None:
    return value.decode("utf-8") if isinstance(value, bytes) else value
