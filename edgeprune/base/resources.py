"""Where the bundled data folders are: the device profiles and the calibration sample data.

One place, because they are found two ways. An installed wheel carries them as package data in
``edgeprune/data/<name>/`` (``setup.py`` copies them there at build time); a source checkout
(the editable install ``scripts/setup.sh`` makes) has them once, at the top of the repository,
in ``targets/`` and ``calibration/``, with no copy and no symlink inside the package.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED = ("targets", "calibration")


def bundled_dir(name: str) -> Path:
    """The folder holding the bundled ``name`` files (``targets`` or ``calibration``)."""
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled folder {name!r} (choose from {', '.join(BUNDLED)})")
    packaged = Path(str(resources.files("edgeprune"))) / "data" / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / name
