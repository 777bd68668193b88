"""Build hook: the device profiles (``targets/``) and the calibration sample data
(``calibration/``) live once, at the top of the repository, and a built package carries them
as package data under ``edgeprune/data/``.

Why a hook and not ``package_dir`` or symlinks: symlinked folders become namespace packages
that setuptools warns about on every install ("Package would be ignored") and that Windows
checkouts turn into text files. Metadata stays in ``setup.cfg``; this file only adds the copy
step. A source checkout (editable install) reads the top-level folders directly: see
``edgeprune/base/resources.py``, the one place that finds them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# top-level folder -> (file patterns shipped, folder inside the package)
PACKAGE_DATA = {
    "targets": (("*.yaml",), "edgeprune/data/targets"),
    "calibration": (("*.npz", "*.yaml", "README.md"), "edgeprune/data/calibration"),
}


class BuildPyWithData(build_py):
    """``build_py`` that also copies the top-level data folders into the built package."""

    def run(self):
        super().run()
        if self.editable_mode:  # the checkout itself is imported: resources.py finds ../targets
            return
        for folder, (patterns, target) in PACKAGE_DATA.items():
            destination = Path(self.build_lib) / target
            destination.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for source in sorted((ROOT / folder).glob(pattern)):
                    shutil.copy2(source, destination / source.name)


setup(cmdclass={"build_py": BuildPyWithData})
