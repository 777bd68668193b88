"""MCU targets: budgets checked before TFLM, and TFLM's aborts kept in a child process.

A cortex-m7 compile of a model over the flash or RAM budget must fail that budget (exit 1, one
line, ``DIR.rejected``) without loading TFLM; a model TFLM would abort on, or a TFLM child
that dies, must end the same way instead of killing the compile.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers_models import digits_like, invoke_cli, tiny_tf_keras_cnn

import edgeprune.base.env as _env
from edgeprune.base.errors import VerificationError
from edgeprune.quantize import tflm
from edgeprune.quantize.convert import convert


def _big_dense():
    """~1.2 M weights: over cortex-m7's 1 MiB flash budget once int8, yet quick to convert."""
    tk = _env.tf_keras()
    tk.utils.set_random_seed(0)
    inputs = tk.Input((64,), name="x")
    h = tk.layers.Dense(1024, activation="relu")(inputs)
    h = tk.layers.Dense(1100, activation="relu")(h)
    return tk.Model(inputs, tk.layers.Dense(10, activation="softmax")(h), name="bigdense")


def _wide_activations():
    """Few weights, but a 200x200x16 int8 activation (640 KB): over the 320 KiB arena budget."""
    tk = _env.tf_keras()
    tk.utils.set_random_seed(0)
    inputs = tk.Input((200, 200, 3), name="image")
    h = tk.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = tk.layers.GlobalAveragePooling2D()(h)
    return tk.Model(inputs, tk.layers.Dense(10, activation="softmax")(h), name="wide")


def _flat_logits():
    """Logits that barely vary (weights 1e-9): the int8 softmax input scale TFLM aborts on."""
    tk = _env.tf_keras()
    inputs = tk.Input((8,), name="x")
    outputs = tk.layers.Dense(4, activation="softmax", kernel_initializer=tk.initializers.Constant(1e-9),
                              bias_initializer="zeros")(inputs)
    return tk.Model(inputs, outputs, name="flat")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcu")
    rng = np.random.default_rng(0)
    _big_dense().save(root / "big.h5")
    np.savez(root / "big.npz", x=rng.random((8, 64), dtype=np.float32))
    _wide_activations().save(root / "wide.h5")
    np.savez(root / "wide.npz", x=rng.random((4, 200, 200, 3), dtype=np.float32))
    _flat_logits().save(root / "flat.h5")
    np.savez(root / "flat.npz", x=rng.random((16, 8), dtype=np.float32))
    tiny_tf_keras_cnn().save(root / "tiny.h5")
    np.savez(root / "tiny.npz", x=digits_like(16))
    return root


def _rejected_report(out):
    rejected = out.with_name(out.name + ".rejected")
    assert (rejected / "model.tflite").is_file() and not out.exists()
    return json.loads((rejected / "report.json").read_text())


def test_flash_budget_fails_before_tflm_in_one_line(files, tmp_path):
    """The real CLI in its own process: exit 1, one stderr line naming the budget, no abort."""
    out = tmp_path / "big"
    proc = subprocess.run([sys.executable, "-m", "edgeprune", "compile", str(files / "big.h5"), "--target",
                           "cortex-m7", "-o", str(out), "--calibration", str(files / "big.npz")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("edgeprune: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "max_model_bytes" in errors[0] and "> limit 1048576" in errors[0] and "big.rejected" in errors[0]
    report = _rejected_report(out)
    assert report["arena"]["tflm_skipped"] == "over budget before TFLM"
    assert "detail" not in report["arena"]  # TFLM never ran
    flash = {b["budget"]: b for b in report["budgets"]}["max_model_bytes"]
    assert not flash["ok"] and flash["actual"] > 1048576


def test_arena_lower_bound_over_ram_fails_before_tflm(files, tmp_path):
    out = tmp_path / "wide"
    code, result = invoke_cli(["compile", files / "wide.h5", "--target", "cortex-m7", "-o", out,
                               "--calibration", files / "wide.npz"])
    assert code == 1, result.output
    msg = str(result.exception)
    assert "max_arena_bytes at least" in msg and "estimated before TFLM" in msg and "> limit 327680" in msg
    report = _rejected_report(out)
    arena = {b["budget"]: b for b in report["budgets"]}["max_arena_bytes"]
    assert arena["estimate"] and not arena["ok"] and arena["actual"] >= 200 * 200 * 16
    assert report["arena"]["method"].startswith("estimate (lower bound)")


def test_predicted_softmax_abort_is_refused_without_tflm(files, tmp_path):
    out = tmp_path / "flat"
    code, result = invoke_cli(["compile", files / "flat.h5", "--target", "cortex-m7", "-o", out,
                               "--calibration", files / "flat.npz"])
    assert code == 1, result.output
    msg = str(result.exception)
    assert msg.startswith("target 'cortex-m7': the TFLM interpreter would abort (SIGABRT): SOFTMAX input")
    assert "is the model trained" in msg and "flat.rejected" in msg and "\n" not in msg
    report = _rejected_report(out)
    assert report["arena"]["tflm_skipped"].startswith("SOFTMAX input")
    assert all(b["ok"] for b in report["budgets"])  # within budget: the runtime is what refuses it


def test_tflm_really_aborts_on_that_softmax_and_check_says_it_in_one_line(files):
    """No hook: today's TFLM aborts on the flat-logits model; the child turns it into one line."""
    model = _env.tf_keras().models.load_model(files / "flat.h5")
    tflite = convert(model, "int8", representative=np.load(files / "flat.npz")["x"], io="int8", int8_only=True)
    assert tflm.predicted_aborts(tflite)
    with pytest.raises(VerificationError) as info:
        tflm.check(tflite)
    assert str(info.value).startswith("the TFLM interpreter aborted (SIGABRT) while loading the model")
    assert "SOFTMAX input" in str(info.value) and "\n" not in str(info.value)  # the cause, not a guess


def test_tflm_child_abort_during_compile_keeps_rejected(files, tmp_path, monkeypatch):
    """A healthy model whose TFLM child dies (the test hook aborts it at the load step)."""
    monkeypatch.setenv("EDGEPRUNE_TFLM_TEST_ABORT", "load")
    out = tmp_path / "tiny"
    code, result = invoke_cli(["compile", files / "tiny.h5", "--target", "cortex-m7", "-o", out,
                               "--calibration", files / "tiny.npz"])
    assert code == 1, result.output
    msg = str(result.exception)
    assert msg.startswith("target 'cortex-m7': the TFLM interpreter aborted (SIGABRT) while loading the model")
    assert "tiny.rejected" in msg
    report = _rejected_report(out)
    assert "aborted (SIGABRT)" in report["arena"]["tflm_error"]


def test_tflm_child_abort_while_running_names_the_step(files, monkeypatch):
    monkeypatch.setenv("EDGEPRUNE_TFLM_TEST_ABORT", "invoke")
    model = _env.tf_keras().models.load_model(files / "tiny.h5")
    tflite = convert(model, "int8", representative=np.load(files / "tiny.npz")["x"], io="int8", int8_only=True)
    with pytest.raises(VerificationError, match=r"^the TFLM interpreter aborted \(SIGABRT\) while running "
                                                r"the model once \(default arena buffer\)"):
        tflm.check(tflite)


@pytest.mark.parametrize("code, expected", [
    ("import os; os.abort()", "the TFLM interpreter aborted (SIGABRT) while starting: TFLM aborts without"),
    ("import ctypes; ctypes.string_at(0)", "the TFLM interpreter crashed (SIGSEGV) while starting: no message"),
    ("import sys; print('boom', file=sys.stderr); sys.exit(3)", "the TFLM interpreter failed while starting: boom"),
])
def test_run_child_turns_any_death_into_one_line(code, expected):
    with pytest.raises(VerificationError) as info:
        tflm.run_child([sys.executable, "-c", code], timeout_s=60)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_healthy_model_still_gets_the_exact_tflm_arena(files, tmp_path):
    out = tmp_path / "ok"
    code, result = invoke_cli(["compile", files / "tiny.h5", "--target", "cortex-m7", "-o", out,
                               "--calibration", files / "tiny.npz"])
    assert code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["arena"]["method"].startswith("tflm (exact")
    assert report["arena"]["bytes"] > report["arena"]["detail"]["arena_head_bytes"] > 0
