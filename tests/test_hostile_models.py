"""Hostile model files: no code from a model file runs, and each is refused in one line.

Every case is a real model file that would run code or touch files when a Keras or TensorFlow
loader reads it (tests/hostile_models.py). Each is given to ``edgeprune inspect`` and
``edgeprune compile``; the test asserts the exit code, one line naming the file and the way out,
that its canary file never appears, and that nothing was written anywhere under the test's
folder. A few cases are then run with ``--unsafe`` to show the canary is live (the fixture
really runs code when trusted), so a passing refusal means something.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hostile_models as hm
import pytest
from helpers_models import invoke_cli

from edgeprune.base.errors import EdgepruneError, UnsafeModelError


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("hostile")
    cases = {f"h5_lambda_{w}": hm.h5_lambda(root, w)
             for w in ("top", "time_distributed", "time_distributed_twice", "inner_sequential", "inner_functional")}
    cases["savedmodel_keras_metadata_lambda"] = hm.savedmodel_lambda(root)
    for fn in ("io.write_file", "print", "py_function", "raw_ops.WriteFile", "io.gfile.rmtree",
               "compat.v1.io.write_file"):
        cases[f"h5_tf_op_{fn}"] = hm.h5_tf_op(root, fn)
    cases["h5_module_initializer"] = hm.h5_module_initializer(root)
    cases.update(hm.keras3_attacks(root))
    cases.update(hm.savedmodel_graph_attacks(root))
    cases["savedmodel_save_on_load"] = hm.savedmodel_save_on_load(root)
    cases["h5_external_storage"] = hm.h5_outside_weights(root, link=False)
    cases["h5_external_link"] = hm.h5_outside_weights(root, link=True)
    cases["keras3_external_storage"] = hm.keras3_outside_weights(root)
    cases["savedmodel_symlinked_variables"] = hm.savedmodel_symlinked_variables(root)
    return cases


CASES = (
    [f"h5_lambda_{w}" for w in ("top", "time_distributed", "time_distributed_twice", "inner_sequential",
                                 "inner_functional")]
    + ["savedmodel_keras_metadata_lambda"]
    + [f"h5_tf_op_{fn}" for fn in ("io.write_file", "print", "py_function", "raw_ops.WriteFile",
                                  "io.gfile.rmtree", "compat.v1.io.write_file")]
    + ["h5_module_initializer", "keras3_module_function", "keras3_get_file", "keras3_marshalled_lambda",
       "keras3_tfsm_layer", "keras3_lambda_in_time_distributed", "keras3_vocabulary_file",
       "graph_write_file", "graph_read_file", "graph_matching_files", "graph_print_to_file",
       "graph_py_function", "graph_write_in_cond_branch", "savedmodel_save_on_load",
       "h5_external_storage", "h5_external_link", "keras3_external_storage", "savedmodel_symlinked_variables"]
)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES)
def test_hostile_model_is_refused_before_any_code_runs(case, hostile, tmp_path, monkeypatch):
    path, canary = hostile[case]
    monkeypatch.syspath_prepend(str(path.parent))  # where evil_mod.py waits to be imported
    monkeypatch.chdir(tmp_path)
    roots = [path.parent, tmp_path]
    before = [_tree(r) for r in roots]
    for args in (["inspect", path], ["compile", path, "-o", tmp_path / "out"]):
        code, result = invoke_cli(args)
        exc = result.exception
        assert isinstance(exc, EdgepruneError), (case, args[0], result.output, exc)
        message = str(exc)
        assert code == 2 and isinstance(exc, UnsafeModelError), (case, message)
        assert "\n" not in message and str(path) in message, message
        assert "--unsafe" in message, message
        assert not canary.exists(), f"{case}: the model's code ran ({canary} appeared)"
    assert [_tree(r) for r in roots] == before, f"{case}: files appeared"
    assert "evil_mod" not in sys.modules


def test_lambda_and_module_attacks_are_live_when_trusted(hostile, tmp_path, monkeypatch):
    """--unsafe loads what the user trusts: the canaries appear, so the refusals above are real."""
    monkeypatch.chdir(tmp_path)
    for case in ("h5_lambda_time_distributed", "h5_lambda_inner_sequential", "savedmodel_keras_metadata_lambda"):
        path, canary = hostile[case]
        canary.unlink(missing_ok=True)
        invoke_cli(["inspect", path, "--unsafe"])
        assert canary.exists(), f"{case}: the fixture's code did not run even with --unsafe"
        canary.unlink()


def test_refusal_is_one_line_from_the_real_command(hostile, tmp_path):
    """The installed console script prints one error line, no traceback, exit 2."""
    exe = Path(sys.executable).with_name("edgeprune")
    for case in ("h5_lambda_time_distributed_twice", "graph_write_file"):
        path, canary = hostile[case]
        env = dict(os.environ, PYTHONPATH=str(path.parent))
        proc = subprocess.run([str(exe), "compile", str(path), "-o", str(tmp_path / "out")], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=300)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("edgeprune: error: ") and str(path) in lines[0], lines
        assert not canary.exists() and not (tmp_path / "out").exists()


def test_ordinary_savedmodels_and_tf_ops_still_load(tmp_path):
    """No false alarms: Keras SavedModels (their own save/restore functions, an LSTM's While
    loop), TFOpLambda math, and keras.applications configs that name TensorFlow initializers."""
    import json

    from edgeprune.load.model_io import load_model
    from edgeprune.load.model_io.safety import check_config

    tk = hm._tk()
    tf = hm._env.tf()
    inputs = tk.Input((5, 4))
    h = tk.layers.LSTM(3)(inputs)
    model = tk.Model(inputs, tf.math.sqrt(tf.nn.relu(tk.layers.Dense(2)(h))))
    model.save(tmp_path / "sm", save_format="tf")
    model.save(tmp_path / "m.h5")
    for path in (tmp_path / "sm", tmp_path / "m.h5"):
        assert load_model(path).model.count_params() == model.count_params()
    effnet = tk.applications.EfficientNetV2B0(weights=None, input_shape=(64, 64, 3))
    check_config(Path("effnet"), json.loads(effnet.to_json()), "tf_keras", custom_objects={}, safe_mode=True)
