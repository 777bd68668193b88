"""The keras-hub coverage table (README, written by scripts/hub_coverage.py) holds: every step a
row marks yes (loads, prunes, converts, agrees, reloads) still passes for that model, so a row
that regresses fails here. And a pruned keras-hub model, saved as a plain functional Model naming
keras-hub layers that keras-hub leaves unregistered, loads again in safe mode, while a file naming
anything outside keras-hub's source tree is still refused.

Real keras-hub models built small from their classes (tests/hub_models.py), real converter and
interpreter. Rows of the slow tier are @slow (about 2 minutes together on 2 cores).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import hub_coverage  # noqa: E402
from helpers_models import invoke_cli  # noqa: E402
from hostile_models import edit_keras_config  # noqa: E402
from hub_models import MODELS  # noqa: E402

from edgeprune.base.errors import UnsafeModelError  # noqa: E402
from edgeprune.load.model_io import load_model  # noqa: E402


def _readme_rows() -> dict:
    """model -> {step: marked yes} from the README's generated table."""
    text = (ROOT / "README.md").read_text()
    body = text.split(hub_coverage.START, 1)[1].split(hub_coverage.END, 1)[0]
    header = None
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or set(cells[0]) <= {"-"}:
            continue
        if header is None:
            header = cells
            continue
        columns = {"loads": 2, "prunes": 3, "converts": 8, "agrees": 9, "reloads": 10}
        rows[cells[0]] = {step: cells[i].startswith("yes") for step, i in columns.items()}
    return rows


README = _readme_rows()


def _marks(name):
    marks = [] if name in hub_coverage.FAST else [pytest.mark.slow]
    return marks


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in MODELS])
def test_row_holds_what_the_readme_says(name, tmp_path):
    if MODELS[name][1]:
        pytest.importorskip("keras_hub")
    expected = README.get(name)
    assert expected is not None, f"{name} has no row in the README table: run scripts/hub_coverage.py"
    if not any(expected.values()):
        pytest.skip(f"{name}: the README marks no step yes (its note says why)")
    row = hub_coverage.one(name, tmp_path)
    regressed = [step for step, yes in expected.items() if yes and not row[step]]
    assert not regressed, f"{name}: {', '.join(regressed)} regressed ({row.get('error', '')})"
    if expected["agrees"]:
        assert row["max_abs_diff"] <= hub_coverage.ATOL and row["top1"] == 1.0
    if expected["prunes"]:
        assert row["macs_after"] < row["macs_before"]
        assert abs(row["macs_agree_pct"]) <= 100 * hub_coverage.MACS_TOLERANCE


# --------------------------------------------------------------------------- reload, safety

@pytest.fixture(scope="module")
def pruned_vit(tmp_path_factory):
    pytest.importorskip("keras_hub")
    import hub_models

    root = tmp_path_factory.mktemp("vit")
    src, dst = root / "vit.keras", root / "pruned.keras"
    hub_models.vit().save(src)
    code, result = invoke_cli(["prune", str(src), "--ratio", "0.5", "-o", str(dst)])
    assert code == 0, result.output
    return dst


def test_a_pruned_vit_loads_inspects_and_compiles_in_safe_mode(pruned_vit, tmp_path):
    """ViTPatchingAndEmbedding and ViTEncoder are keras-hub's but unregistered, and their configs
    carry keys their constructors reject: the pruned file still loads without --custom-objects."""
    import json
    import zipfile

    model = load_model(pruned_vit).model
    assert model.get_layer("vit_encoder").get_config()["mlp_dim"] == 32
    layers = json.loads(zipfile.ZipFile(pruned_vit).read("config.json"))["config"]["layers"]
    patching = next(entry["config"] for entry in layers if entry["class_name"] == "ViTPatchingAndEmbedding")
    assert "num_patches" not in patching and "num_positions" not in patching  # written clean
    code, result = invoke_cli(["inspect", str(pruned_vit)])
    assert code == 0, result.output
    code, result = invoke_cli(["compile", str(pruned_vit), "--target", "x86-64", "-o", str(tmp_path / "art")])
    assert code == 0, result.output
    assert (tmp_path / "art" / "model.tflite").is_file()


def _renamed_encoder(module, class_name, registered_name=None):
    def edit(config):
        for entry in config["config"]["layers"]:
            if entry["class_name"] == "ViTEncoder":
                entry.update(module=module, class_name=class_name, registered_name=registered_name or class_name)
    return edit


@pytest.mark.parametrize("module,class_name,why", [
    ("os", "system", "a function of another module"),
    ("subprocess", "Popen", "a class outside keras-hub"),
    ("keras_hub_evil.src.layers", "ViTEncoder", "a package that only starts like keras_hub"),
    ("keras_hub.src..models.vit.vit_layers", "ViTEncoder", "not a dotted module name"),
    ("keras_hub.src.utils.preset_utils", "KerasPresetLoader", "keras-hub's, but not a Keras layer"),
    ("keras_hub.src.utils.preset_utils", "KaggleApiHTTPError", "re-exported into keras-hub from elsewhere"),
    ("keras_hub.src.models.vit.not_there", "ViTEncoder", "a module keras-hub does not have (never imported)"),
])
def test_a_file_naming_code_outside_keras_hub_layers_is_still_refused(pruned_vit, tmp_path, module, class_name, why):
    hostile = tmp_path / "hostile.keras"
    edit_keras_config(pruned_vit, hostile, _renamed_encoder(module, class_name))
    with pytest.raises(UnsafeModelError, match=re.escape(class_name)):
        load_model(hostile)
    assert "keras_hub.src.models.vit.not_there" not in sys.modules and "keras_hub_evil" not in sys.modules


def test_a_registered_name_pointing_elsewhere_is_refused():
    """Keras looks ``registered_name`` up before the module: a keras-hub module with the registered
    name of a class outside keras-hub (here a user-registered one) is not let through by the module."""
    from edgeprune.base.env import keras3

    keras = keras3()

    @keras.saving.register_keras_serializable(package="elsewhere")
    class Elsewhere(keras.layers.Layer):
        pass

    pytest.importorskip("keras_hub")

    from edgeprune.load.model_io.hub import unregistered_hub_class

    entry = {"module": "keras_hub.src.models.vit.vit_layers", "class_name": "ViTEncoder",
             "registered_name": "elsewhere>Elsewhere"}
    assert unregistered_hub_class(entry) is None
    assert unregistered_hub_class({**entry, "registered_name": "ViTEncoder"}) is not None
