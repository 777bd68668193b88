"""Resource limits: how big a declared size in an untrusted file may be before we allocate it.

Model files, data files, images and bundles are untrusted: a 200-byte file can declare a
10^12-element array, a 1.6-gigapixel image or a 10 GB zip member. Every reader checks the size a
file *declares* (npy header, zip directory, image header, tar header) against one of these
limits before it allocates or decompresses, and refuses with one line that names the file, the
limit and the environment variable that raises it.

Each limit is a field of :class:`ResourceLimits`; its environment variable is
``EDGEPRUNE_MAX_<FIELD NAME IN CAPITALS>`` (a plain integer, or with a K/M/G/T suffix meaning
powers of 1024):

``EDGEPRUNE_MAX_ARRAY_BYTES``      one data array (.npy, an .npz member, decoded image batch): 8 GiB
``EDGEPRUNE_MAX_IMAGE_PIXELS``     one image, width x height: 100 megapixels
``EDGEPRUNE_MAX_MEMBER_BYTES``     one member of a .keras/.npz zip or a bundle tar, uncompressed: 4 GiB
``EDGEPRUNE_MAX_ARCHIVE_BYTES``    all members of a .keras zip or a bundle tar, uncompressed: 16 GiB
``EDGEPRUNE_MAX_ARCHIVE_MEMBERS``  members of a bundle tar: 10,000
``EDGEPRUNE_MAX_COMPRESSION_RATIO`` uncompressed/compressed size of a .keras member over 1 MiB: 1,000
                                   (deflate's ceiling is ~1,032, so only near-constant data trips it)
``EDGEPRUNE_MAX_CONFIG_BYTES``     a .keras config.json or metadata.json: 256 MiB
``EDGEPRUNE_MAX_MODEL_PARAMS``     parameters of a loaded model: 2,000,000,000
``EDGEPRUNE_MAX_INPUT_ELEMENTS``   elements of one sample of one model input (known dims): 2^30
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

from edgeprune.base.errors import InputError

ENV_PREFIX = "EDGEPRUNE_MAX_"
_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

# Members this small cannot be a bomb worth refusing, whatever their ratio (a config of spaces).
RATIO_MIN_BYTES = 1 << 20


@dataclass(frozen=True)
class ResourceLimits:
    """The limits in force; :func:`current` reads the environment overrides."""

    array_bytes: int = 8 << 30
    image_pixels: int = 100_000_000
    member_bytes: int = 4 << 30
    archive_bytes: int = 16 << 30
    archive_members: int = 10_000
    compression_ratio: int = 1_000
    config_bytes: int = 256 << 20
    model_params: int = 2_000_000_000
    input_elements: int = 1 << 30


# What a value of each limit counts, as (plural noun, adjective before "limit").
_UNITS = {
    "array_bytes": ("bytes", "byte"), "member_bytes": ("bytes", "byte"), "archive_bytes": ("bytes", "byte"),
    "config_bytes": ("bytes", "byte"), "image_pixels": ("pixels", "pixel"),
    "archive_members": ("members", "member"), "model_params": ("parameters", "parameter"),
    "input_elements": ("elements", "element"),
}


def env_var(name: str) -> str:
    """The environment variable that raises limit ``name`` (a ResourceLimits field)."""
    return ENV_PREFIX + name.upper()


def _parse(var: str, text: str) -> int:
    raw = text.strip().replace("_", "").upper().removesuffix("IB").removesuffix("B")
    scale = _SUFFIX.get(raw[-1:], 1)
    digits = raw[:-1] if scale != 1 else raw
    if not digits.isdigit() or int(digits) <= 0:
        raise InputError(f"{var}={text!r}: expected a positive integer (optionally with K, M, G or T)")
    return int(digits) * scale


def current() -> ResourceLimits:
    """The defaults with every ``EDGEPRUNE_MAX_*`` override applied (read on each call)."""
    values = {}
    for f in fields(ResourceLimits):
        text = os.environ.get(env_var(f.name))
        if text is not None and text.strip():
            values[f.name] = _parse(env_var(f.name), text)
    return ResourceLimits(**values)


def check(name: str, value: int, where: str, *, what: str = "declares", limits: ResourceLimits | None = None) -> None:
    """Refuse ``value`` over limit ``name`` with the one uniform line:

    ``WHERE: declares 1,000,000,000,000 bytes, over the 8,589,934,592-byte limit (raise it with
    EDGEPRUNE_MAX_ARRAY_BYTES)``
    """
    limit = getattr(limits or current(), name)
    if value <= limit:
        return
    if name == "compression_ratio":
        found, bound = f"a compression ratio of {value:,}:1", f"{limit:,}:1"
    else:
        plural, adjective = _UNITS[name]
        found, bound = f"{value:,} {plural}", f"{limit:,}-{adjective}"
    raise InputError(f"{where}: {what} {found}, over the {bound} limit (raise it with {env_var(name)})")


def check_zip_member(info, where: str, *, limits: ResourceLimits | None = None) -> None:
    """A zip member's declared uncompressed size, and its compression ratio when it is big enough
    to matter, checked from the central directory before a byte is inflated."""
    limits = limits or current()
    member = f"{where}: member '{info.filename}'"
    check("member_bytes", info.file_size, member, limits=limits)
    if info.file_size >= RATIO_MIN_BYTES:
        ratio = info.file_size // max(info.compress_size, 1)
        check("compression_ratio", ratio, member, what="has", limits=limits)


def check_model(model, where: str) -> None:
    """Parameter count and per-sample input elements of a loaded Keras model (either flavour).

    Runs before calibration, training or conversion allocate per-sample buffers; unknown (None)
    dimensions are skipped here (``--input-shape`` fixes them later).
    """
    limits = current()
    count = getattr(model, "count_params", None)
    if callable(count):
        check("model_params", int(count()), where, what="has", limits=limits)
    for tensor in getattr(model, "inputs", None) or []:
        elements = 1
        for dim in tuple(tensor.shape)[1:]:
            if dim is not None:
                elements *= int(dim)
        name = getattr(tensor, "name", "input")
        check("input_elements", elements, f"{where}: input '{name}'", what="declares samples of", limits=limits)
