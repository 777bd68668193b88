"""The house stays as docs/ARCHITECTURE.md draws it: imports only downward (import-linter),
the compile stages it names are the code's, and every path it names exists."""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 3)
    return DOC[start:end if end != -1 else None]


def _first_column(section: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^\| `?([\w/.]+)`? \|", section, re.M)]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    command = [str(lint)] if lint.exists() else [sys.executable, "-c",
                                                 "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(command + ["--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout


def test_layers_in_the_doc_are_the_contract():
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    contract = config["importlinter:contract:layers"]["layers"].split()
    documented = _first_column(_section("Layers"))
    assert documented == contract
    packages = {p.name for p in (ROOT / "edgeprune").iterdir() if (p / "__init__.py").exists()} - {"_vendor"}
    assert set(contract) == packages


def test_stages_in_the_doc_are_the_code():
    from edgeprune.pipelines import stages

    documented = re.findall(r"^\| `(\w+)` \|", _section("The compile stages"), re.M)
    assert documented == [s.__name__ for s in stages.COMPILE]
    source = (ROOT / "edgeprune" / "pipelines" / "stages.py").read_text()
    recorded = set(re.findall(r'\.stage\("(\w+)"', source))
    names = set()
    for row in re.finditer(r"^\| `\w+` \| (.+?) \|", _section("The compile stages"), re.M):
        names |= set(re.findall(r"`(\w+)`", row.group(1)))
    assert names == recorded


def test_every_path_the_doc_names_exists():
    text = DOC + (ROOT / "README.md").read_text() + (ROOT / "SECURITY.md").read_text()
    paths = set(re.findall(r"(?<![\w/.~])((?:edgeprune|benchmarks|tests|scripts)/[\w/.]*[\w/])(?![\w*])", text))
    paths = {p for p in paths if not p.startswith("edgeprune/data")}  # made by a wheel build
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing
    modules = set(re.findall(r"`(edgeprune(?:\.\w+)+)", text))
    unknown = []
    for name in sorted(modules):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):  # the longest module path, the rest attributes
            base = ROOT.joinpath(*parts[:cut])
            if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
                break
        else:
            unknown.append(name)
            continue
        if cut < len(parts) - 1 and parts[cut] not in ("Limits",):
            unknown.append(name)
    assert not unknown
