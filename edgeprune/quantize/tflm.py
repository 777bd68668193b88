"""Check an artifact with the TensorFlow Lite Micro interpreter itself and read its exact arena.

TFLM has fewer kernels than LiteRT and plans memory its own way, so the only trustworthy
answer to "will it run, and in how much RAM" for a microcontroller is the real interpreter
(PyPI ``tflite-micro``). Its RecordingMicroAllocator prints the arena usage from C++ to
stdout, so we capture file descriptors 1 and 2 around the calls.

TFLM checks its kernels' parameters with ``abort()`` and no message (an int8 softmax whose
input scale it cannot represent, a tiny arena), which would kill the compile. So
:func:`check_for_target` first checks what the flatbuffer alone can tell (size vs flash, a
lower bound of the arena vs RAM, the aborts :func:`predicted_aborts` can foresee) and only
then runs TFLM, in a child process (:func:`check`), where a crash becomes one line.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from edgeprune.base.env import capture_fds
from edgeprune.base.errors import VerificationError

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")


def _reason(text: str, fallback: str) -> str:
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "RecordingMicroAllocator" not in ln and not ln.startswith(_MARK)]
    return "; ".join(lines[:2])[:300] or fallback


def check(tflite: bytes, *, arena_size: int | None = None, timeout_s: float = 120.0) -> dict:
    """Load and run ``tflite`` once under TFLM in a child process; return exact arena bytes.

    ``arena_size`` is the buffer handed to TFLM (default: generous, so the measurement is not
    limited by it). Raises VerificationError when TFLM refuses or crashes on the model.
    """
    with tempfile.TemporaryDirectory(prefix="edgeprune-tflm-") as work:
        model = os.path.join(work, "model.tflite")
        with open(model, "wb") as fh:
            fh.write(bytes(tflite))
        cmd = [sys.executable, "-m", "edgeprune.quantize.tflm", model, str(arena_size or 0)]
        buffer = f"arena buffer {arena_size} bytes" if arena_size else "default arena buffer"
        return run_child(cmd, timeout_s=timeout_s, context=buffer,
                         explain=lambda: "; ".join(predicted_aborts(tflite)))


def run_child(cmd: list[str], *, timeout_s: float = 120.0, context: str = "", explain=None) -> dict:
    """Run a TFLM child (``python -m edgeprune.quantize.tflm``) and return its result.

    The child prints ``_MARK {"stage": ...}`` before each step and ``_MARK {"result"|"error": ...}``
    at the end; a child killed by a signal becomes one VerificationError naming the signal and
    the step it died in. TFLM's own aborts print nothing: ``explain()`` may name the cause from
    the model (:func:`predicted_aborts`).
    """
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise VerificationError(f"the TFLM interpreter did not finish within {timeout_s:g}s") from None
    payloads = [json.loads(ln[len(_MARK):]) for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
    stages = [p["stage"] for p in payloads if "stage" in p]
    final = [p for p in payloads if "stage" not in p]
    if proc.returncode == 0 and final:
        if "error" in final[-1]:
            raise VerificationError(final[-1]["error"])
        return final[-1]["result"]
    step = _STEPS.get(stages[-1], stages[-1]) if stages else "starting"
    where = f" while {step}" + (f" ({context})" if context else "")
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        verb = "aborted" if name == "SIGABRT" else "crashed"
        said = _reason(proc.stdout + proc.stderr, "") or (explain() if explain and name == "SIGABRT" else "")
        hint = said or ("TFLM aborts without a message when a kernel cannot represent its quantization "
                        "parameters or the arena cannot be planned" if name == "SIGABRT" else "no message")
        raise VerificationError(f"the TFLM interpreter {verb} ({name}){where}: {hint}")
    raise VerificationError(f"the TFLM interpreter failed{where}: {_reason(proc.stderr, f'exit {proc.returncode}')}")


# What the child was doing, by the stage marker it printed last.
_STEPS = {"load": "loading the model and planning its arena", "invoke": "running the model once",
          "allocations": "reading the arena usage"}


def predicted_aborts(tflite: bytes) -> list[str]:
    """Why TFLM would abort on ``tflite``, for what the flatbuffer alone shows.

    TFLM's int8 SOFTMAX computes ``beta * input_scale * 2**26`` and aborts (TFLITE_CHECK in
    QuantizeMultiplierGreaterThanOne) unless it exceeds 1: logits with almost no range on the
    calibration data (an untrained model, unrepresentative data) give such a scale.
    """
    from edgeprune.quantize.convert import _schema

    fb = _schema()
    model = fb.Model.GetRootAsModel(bytes(tflite), 0)
    problems = []
    for g in range(model.SubgraphsLength()):
        sub = model.Subgraphs(g)
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != fb.BuiltinOperator.SOFTMAX:
                continue
            tensor = sub.Tensors(op.Inputs(0))
            quant = tensor.Quantization()
            if tensor.Type() != fb.TensorType.INT8 or quant is None or not quant.ScaleLength():
                continue
            beta = 1.0
            if op.BuiltinOptionsType() == fb.BuiltinOptions.SoftmaxOptions:
                options = fb.SoftmaxOptions()
                table = op.BuiltinOptions()
                options.Init(table.Bytes, table.Pos)
                beta = options.Beta()
            scale = float(quant.Scale(0))
            if beta * scale * 2.0**26 <= 1.0:
                name = (tensor.Name() or b"").decode()
                problems.append(
                    f"SOFTMAX input '{name}' has int8 scale {scale:.3g}, below the {1 / (beta * 2**26):.3g} "
                    f"that TFLM's int8 softmax can represent: the logits barely vary on the calibration "
                    f"data (is the model trained, and the calibration data representative?)")
    return problems


@dataclass
class TargetCheck:
    """What compile records for an MCU artifact: the arena row, the budget rows, and why the
    artifact cannot run under TFLM (None when it can)."""

    arena: dict
    budgets: list[dict]
    error: str | None = None


def check_for_target(tflite: bytes, limits) -> TargetCheck:
    """The budgets of an MCU target, checked before TFLM where possible, then TFLM in a child.

    The flatbuffer's size is what goes to flash; the estimate of live activations
    (:func:`edgeprune.quantize.convert.estimate_arena_bytes`) is a lower bound of TFLM's arena, so a
    model over either limit, or one TFLM would abort on (:func:`predicted_aborts`), is refused
    without loading TFLM. Otherwise TFLM's exact arena replaces the estimate.
    """
    from edgeprune.device import budgets as budget_checks
    from edgeprune.quantize.convert import estimate_arena_bytes

    estimate = estimate_arena_bytes(tflite)
    before = budget_checks.check(limits, model_bytes=len(tflite), arena_bytes=estimate)
    for row in before:
        if row["budget"] == "max_arena_bytes":
            row["estimate"] = True  # a lower bound: over it means over for sure
    arena = {"bytes": estimate, "method": "estimate (lower bound): peak bytes of live non-constant tensors; "
                                          "TFLM not run"}
    if budget_checks.failures(before):
        arena["tflm_skipped"] = "over budget before TFLM"
        return TargetCheck(arena, before)
    aborts = predicted_aborts(tflite)
    if aborts:
        arena["tflm_skipped"] = aborts[0]
        return TargetCheck(arena, before, f"the TFLM interpreter would abort (SIGABRT): {aborts[0]}")
    try:
        micro = check(tflite)
    except VerificationError as exc:
        arena["tflm_error"] = str(exc)
        return TargetCheck(arena, before, str(exc))
    arena = {"bytes": micro["arena_bytes"], "method": "tflm (exact, RecordingMicroAllocator)", "detail": micro}
    return TargetCheck(arena, budget_checks.check(limits, model_bytes=len(tflite), arena_bytes=arena["bytes"]))


_MARK = "@@edgeprune-tflm@@"


def check_in_process(tflite: bytes, *, arena_size: int | None = None, on_stage=None) -> dict:
    """Load and run ``tflite`` once under TFLM in this process (may crash it: prefer ``check``).

    ``arena_size`` is the buffer handed to TFLM (default: generous, so the measurement is not
    limited by it). Raises VerificationError when TFLM refuses the model (missing kernel,
    float op without a TFLM kernel, arena too small). ``on_stage(name)`` is called before
    each step ("load", "invoke", "allocations").
    """
    from tflite_micro import runtime

    on_stage = on_stage or (lambda name: None)

    size = arena_size or max(16 << 20, 10 * len(tflite))
    on_stage("load")
    with capture_fds() as out:
        try:
            interp = runtime.Interpreter.from_bytes(bytes(tflite), arena_size=size)
            error = None
        except Exception as exc:  # RuntimeError from the C++ side
            interp, error = None, exc
    if interp is None:
        raise VerificationError(f"TensorFlow Lite Micro cannot load the model: {_reason(out[0], str(error))}")
    inputs = []
    with capture_fds():  # the binding prints "index out of range" when we run past the end
        while True:
            try:
                inputs.append(interp.get_input_details(len(inputs)))
            except Exception:
                break
    on_stage("invoke")
    with capture_fds() as out:
        try:
            for idx, detail in enumerate(inputs):
                shape = tuple(int(d) for d in detail["shape"])
                interp.set_input(np.zeros(shape, detail["dtype"]), idx)
            interp.invoke()
            error = None
        except Exception as exc:
            error = exc
    if error is not None:
        raise VerificationError(f"TensorFlow Lite Micro failed to run the model: {_reason(out[0], str(error))}")
    on_stage("allocations")
    with capture_fds() as out:
        interp.print_allocations()
    text = out[0]
    total = _TOTAL.search(text)
    if total is None:
        raise VerificationError("TensorFlow Lite Micro did not report its arena usage")
    head, tail = _HEAD.search(text), _TAIL.search(text)
    return {
        "runtime": "tflm",
        "arena_bytes": int(total.group(1)),
        "arena_head_bytes": int(head.group(1)) if head else None,
        "arena_tail_bytes": int(tail.group(1)) if tail else None,
        "arena_buffer_bytes": size,
        "allocations": [ln.split("] ", 1)[-1] for ln in text.splitlines() if "' used " in ln],
        "tflm_version": _version(),
    }


def _say(payload: dict) -> None:
    sys.stdout.write(_MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _stage(name: str) -> None:
    """Tell the parent which step starts (it names the step if this process dies in it).

    ``EDGEPRUNE_TFLM_TEST_ABORT=STEP`` aborts the child at that step: the only way to make a
    test's child die like TFLM does without a model that crashes today's TFLM.
    """
    _say({"stage": name})
    if os.environ.get("EDGEPRUNE_TFLM_TEST_ABORT") == name:
        os.abort()


def _main(argv: list[str]) -> int:
    model, arena = argv[0], int(argv[1])
    with open(model, "rb") as fh:
        data = fh.read()
    try:
        payload = {"result": check_in_process(data, arena_size=arena or None, on_stage=_stage)}
    except VerificationError as exc:
        payload = {"error": str(exc)}
    _say(payload)
    return 0


def _version() -> str | None:
    try:
        import tflite_micro

        return tflite_micro.__version__
    except Exception:  # pragma: no cover
        return None


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
