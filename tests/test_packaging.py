"""A non-editable install (the built wheel, in a fresh virtual environment) carries the device
profiles, the calibration sample data and the device-side runner, and its CLI works outside
the source tree."""
from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    work = tmp_path_factory.mktemp("pkg")
    dist = work / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, text=True, cwd=work,
    )
    (work / "build.log").write_text(build.stdout + build.stderr)
    wheels = list(dist.glob("edgeprune-*.whl"))
    assert len(wheels) == 1
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # Dependencies come from the test environment (no network download of TensorFlow again);
    # edgeprune itself comes only from the wheel installed into the fresh environment.
    target_site = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip())
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (target_site / "zz_test_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])],
                   check=True, capture_output=True)
    return env_dir, wheels[0]


def test_data_is_declared_package_data_not_symlinked_packages(wheel_venv):
    """The profiles and sample data live once, at the top of the checkout; the build copies
    them in (setup.py), so setuptools has no undeclared data folders to warn about and no
    symlink breaks a Windows checkout."""
    env_dir, _ = wheel_venv
    links = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "build"]  # .git, .venv, caches
        links += [os.path.join(folder, n) for n in dirs + files if os.path.islink(os.path.join(folder, n))]
    assert not links, f"symlinks in the source tree: {links}"
    log = (env_dir.parent / "build.log").read_text()
    assert "would be ignored" not in log and "SetuptoolsDeprecationWarning" not in log, log[-3000:]
    assert not (ROOT / "edgeprune" / "data").exists()


def _run(env_dir, *args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([str(env_dir / "bin" / "edgeprune"), *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


def test_wheel_carries_profiles_and_data(wheel_venv, tmp_path):
    env_dir, wheel = wheel_venv
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    for profile in ("x86-64", "rpi4", "rpi5", "android-arm64", "cortex-m7"):
        assert f"edgeprune/data/targets/{profile}.yaml" in names
    assert any(n.startswith("edgeprune/data/calibration/") and n.endswith(".npz") for n in names), names
    assert "edgeprune/device/runner.py" in names

    proc = _run(env_dir, "targets", "list", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {"x86-64", "cortex-m7"} <= {p["name"] for p in json.loads(proc.stdout)}


def test_installed_package_is_the_wheel_not_the_checkout(wheel_venv, tmp_path):
    env_dir, _ = wheel_venv
    out = subprocess.check_output(
        [str(env_dir / "bin" / "python"), "-c", "import edgeprune; print(edgeprune.__file__)"],
        text=True, cwd=tmp_path,
    )
    assert str(env_dir) in out and str(ROOT) not in out


def test_dockerfile_installs_the_readme_constraints_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in setup and "scripts/setup.sh" in readme
    assert re.search(r"^COPY .*constraints\.txt", dockerfile, re.M)
    assert re.search(r"pip install .*-c constraints\.txt", dockerfile)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    for top in ("targets", "calibration", "edgeprune"):
        assert re.search(rf"^COPY {top} ", dockerfile, re.M)


def test_constraints_pin_the_tested_stack():
    pins = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().split()
        if "==" in line
    )
    lowered = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    assert lowered["tensorflow"].startswith("2.21")
    assert lowered["tf-keras"].startswith("2.21")
    assert lowered["tensorflow-model-optimization"] == "0.8.1"
    assert "tensorflow-cpu" not in lowered
