#!/usr/bin/env python3
"""edgeprune's device-side runner: benchmark (and optionally evaluate) one .tflite file.

This file is copied as-is onto the target device and run there with the device's own
python3, so it must stay self-contained: Python 3 stdlib (3.7+), numpy and whichever TFLite
runtime the device has (ai-edge-litert, tflite-runtime or full TensorFlow). The controller
runs the very same file in a local subprocess, so local and remote figures are measured the
same way.

Usage:  python3 runner.py JOB.json      (or the job as a JSON string, or '-' for stdin)

Job keys: artifact (path), threads [1], runs 50, warmup 5, min_duration_s 0, seed 0,
eval_inputs (.npy, or .npz keyed by input name for several inputs; optional), outputs_path
(write the raw eval outputs there -- .npy, or .npz keyed by output name -- instead of inline
base64; the controller scores them), watch_stdin (exit when stdin reaches EOF, i.e. the
controller went away), protocol ({"name": "mlperf", "min_queries", "min_duration_s",
"repeats", "pause_s"}: repeated single-stream runs instead of one steady state),
time_models (list of .tflite paths: microseconds per invoke of each, e.g. the single-layer
models of a latency table; ``artifact`` may then be omitted), time_runs/time_rounds,
probe (only load, allocate and invoke ``artifact`` once: edgeprune.device.tflite_check's child).
runtime_api ("auto", "compiled_model" or "interpreter"; default $EDGEPRUNE_RUNTIME_API, else
"auto": LiteRT's CompiledModel where ai-edge-litert has it, the Interpreter elsewhere, see
choose_api); the result's "runtime" names the one that ran, e.g. "ai-edge-litert 2.3.0 CompiledModel".

Output: exactly one JSON document on stdout; logs go to stderr. On a failure it is
{"error": {"kind": ..., "message": ...}} with exit code 3 (missing dependency) or 4 (bad
job or artifact); any other non-zero exit is a crash.
"""

import base64
import gc
import hashlib
import io
import json
import os
import platform
import socket
import sys
import threading
import time

EXIT_MISSING_DEPENDENCY = 3
EXIT_BAD_JOB = 4

INSTALL_HINT = (
    "install a TFLite runtime for {py}: `{py} -m pip install ai-edge-litert` "
    "(wheels exist for x86_64 and aarch64 only: a Raspberry Pi needs the 64-bit OS), "
    "or `{py} -m pip install tflite-runtime` (older, numpy<2), or `{py} -m pip install tensorflow`"
)

# ARM "CPU part" ids from /proc/cpuinfo, for devices whose kernel prints no model name.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd4d": "Cortex-A715", "0xc07": "Cortex-A7",
    "0xc0f": "Cortex-A15", "0xd40": "Neoverse-V1", "0xd4f": "Neoverse-V2",
}


class RunnerFailure(Exception):
    """A failure the controller should report as one clear line (not a crash)."""

    def __init__(self, kind, message, code=EXIT_BAD_JOB):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.code = code


def log(message):
    sys.stderr.write("[runner] %s\n" % message)
    sys.stderr.flush()


# --------------------------------------------------------------------------- dependencies

def import_numpy():
    """numpy, or a RunnerFailure that says how to install it for this interpreter."""
    try:
        import numpy
    except ImportError as exc:
        raise RunnerFailure(
            "missing_numpy",
            "numpy is not importable by %s (%s): install it with `%s -m pip install numpy` "
            "or `sudo apt install python3-numpy`" % (sys.executable, exc, sys.executable),
            EXIT_MISSING_DEPENDENCY,
        )
    return numpy


def _dist_version(dist, module):
    try:
        from importlib import metadata  # Python 3.8+

        return metadata.version(dist)
    except Exception:
        return str(getattr(module, "__version__", "unknown"))


NUMPY_ABI_MARKERS = ("_ARRAY_API", "NumPy 1.x", "multiarray failed to import")


def _error_chain_text(exc):
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append("%s: %s" % (type(exc).__name__, exc))
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def _numpy_abi_problem(dist, text):
    numpy = import_numpy()
    parts = [p for p in text.split(" <- ") if any(m in p for m in NUMPY_ABI_MARKERS)] or [text]
    return ("%s is installed but was built for numpy 1.x and cannot run under numpy %s (%s)"
            % (dist, numpy.__version__, parts[0].splitlines()[0][:200]))


def find_runtime(probe=None):
    """Return (name, version, Interpreter class) of the first TFLite runtime that works.

    Order: ai-edge-litert (current), tflite-runtime (legacy), TensorFlow (heavy). A runtime
    that is installed but broken is reported as such instead of being skipped silently:
    tflite-runtime 2.14 imports fine under numpy 2 and only fails ('_ARRAY_API not found')
    when it builds an interpreter, so ``probe`` (a model path) is loaded once to find out.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    problems = []
    candidates = (
        ("ai-edge-litert", "ai_edge_litert.interpreter", "ai_edge_litert"),
        ("tflite-runtime", "tflite_runtime.interpreter", "tflite_runtime"),
        ("tensorflow", "tensorflow", "tensorflow"),
    )
    import importlib
    import warnings

    for dist, module_name, top in candidates:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(module_name)
                cls = module.lite.Interpreter if dist == "tensorflow" else module.Interpreter
        except BaseException as exc:  # noqa: B902 - C extensions raise odd things on ABI clashes
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = "%s: %s" % (type(exc).__name__, exc)
            missing = isinstance(exc, ImportError) and getattr(exc, "name", None) in (top, module_name)
            if missing:
                continue
            if any(marker in text for marker in NUMPY_ABI_MARKERS):
                problems.append(_numpy_abi_problem(dist, text))
            else:
                problems.append("%s is installed but failed to import (%s)" % (dist, text.splitlines()[0]))
            continue
        if probe is not None:
            try:
                cls(model_path=probe)
            except Exception as exc:  # a bad model is reported later, by load_interpreter
                text = _error_chain_text(exc)
                if any(marker in text for marker in NUMPY_ABI_MARKERS):
                    problems.append(_numpy_abi_problem(dist, text))
                    continue
        return dist, _dist_version(dist, sys.modules.get(top)), cls
    hint = INSTALL_HINT.format(py=sys.executable)
    if problems:
        raise RunnerFailure("broken_runtime", "; ".join(problems) + ": run `%s -m pip install ai-edge-litert` "
                            "(or `pip install 'numpy<2'`)" % sys.executable, EXIT_MISSING_DEPENDENCY)
    raise RunnerFailure(
        "missing_runtime",
        "no TFLite runtime (ai_edge_litert, tflite_runtime or tensorflow) is importable; " + hint,
        EXIT_MISSING_DEPENDENCY,
    )


# --------------------------------------------------------------------------- device facts

def _read(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def cpu_model():
    """A human CPU name: x86 'model name', else the ARM core type(s) and the board model."""
    info = _read("/proc/cpuinfo")
    fields = {}
    parts = []
    for line in info.splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        fields.setdefault(key, value)
        if key == "CPU part" and value not in parts:
            parts.append(value)
    name = fields.get("model name") or fields.get("Processor") or fields.get("cpu model")
    if not name and parts:
        name = "/".join(ARM_PARTS.get(p.lower(), "ARM part %s" % p) for p in parts)
    board = _read("/proc/device-tree/model").strip("\x00\n ") or fields.get("Model", "")
    if not name:
        name = platform.processor() or platform.machine()
    return "%s (%s)" % (name, board) if board else name


def os_name():
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def find_benchmark_model(job):
    """The device's LiteRT ``benchmark_model`` binary (its ``--enable_op_profiling=true`` gives
    per-op times), from the job's ``benchmark_model`` path or PATH; None where it has none.

    Only detected: no registry reachable when this was written ships the native binary (the
    ai-edge-litert wheel's ``litert-benchmark`` is a Python wrapper over CompiledModel without
    an op profiler), so its output format was never seen here and is not parsed yet.
    """
    import shutil

    given = job.get("benchmark_model")
    if given:
        return given if os.path.isfile(given) and os.access(given, os.X_OK) else None
    return shutil.which("benchmark_model")


def device_info(runtime_name, runtime_version, numpy):
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "os": os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "runtime": runtime_name,
        "runtime_version": runtime_version,
        "numpy": numpy.__version__,
    }


def _first_line(path):
    text = _read(path).strip()
    return text.splitlines()[0].strip() if text else None


def _int_or_none(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def device_state():
    """What skews latency, where the device exposes it: governor, frequencies, temperatures,
    throttling and load average (None when a fact is not readable, e.g. in a container)."""
    state = {}
    try:
        state["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        state["load_average"] = None
    base = "/sys/devices/system/cpu"
    governors, freqs = {}, []
    try:
        cpus = sorted((n for n in os.listdir(base) if n.startswith("cpu") and n[3:].isdigit()),
                      key=lambda n: int(n[3:]))
    except OSError:
        cpus = []
    for cpu in cpus:
        gov = _first_line("%s/%s/cpufreq/scaling_governor" % (base, cpu))
        if gov:
            governors[gov] = governors.get(gov, 0) + 1
        khz = _int_or_none(_first_line("%s/%s/cpufreq/scaling_cur_freq" % (base, cpu)))
        if khz:
            freqs.append(khz // 1000)
    state["governor"] = ",".join(sorted(governors)) if governors else None
    state["cpu_mhz"] = freqs or None
    temps = {}
    try:
        zones = sorted(n for n in os.listdir("/sys/class/thermal") if n.startswith("thermal_zone"))
    except OSError:
        zones = []
    for zone in zones:
        milli = _int_or_none(_first_line("/sys/class/thermal/%s/temp" % zone))
        if milli is not None:
            kind = _first_line("/sys/class/thermal/%s/type" % zone) or zone
            temps[kind] = milli / 1000.0
    state["temperature_c"] = temps or None
    # Raspberry Pi firmware: bit 0 under-voltage, 1 frequency capped, 2 throttled, 3 soft temp limit
    throttled = _first_line("/sys/devices/platform/soc/soc:firmware/get_throttled")
    if throttled is None:
        try:
            import subprocess

            out = subprocess.run(["vcgencmd", "get_throttled"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, timeout=5).stdout.decode("ascii", "replace")
            throttled = out.strip().partition("=")[2] or None
        except Exception:
            throttled = None
    state["throttled"] = throttled
    return state


# --------------------------------------------------------------------------- memory

def _status_kb(field):
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(field + ":"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) so each thread count gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def max_rss_kb():
    try:
        import resource

        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value // 1024 if sys.platform == "darwin" else value
    except Exception:
        return None


# --------------------------------------------------------------------------- tensors

def quant_params(detail):
    scale, zero = detail.get("quantization", (0.0, 0))
    return float(scale), int(zero)


def random_input(detail, rng, numpy):
    """Random data matching one input tensor's shape and dtype (floats in [0, 1))."""
    shape = [max(int(d), 1) for d in detail["shape"]]
    dtype = numpy.dtype(detail["dtype"])
    if dtype.kind == "f":
        return rng.uniform(0.0, 1.0, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dtype)
    if dtype.kind in "iu":
        info = numpy.iinfo(dtype)
        scale, _ = quant_params(detail)
        low, high = (int(info.min), int(info.max)) if scale > 0 else (0, 100)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    raise RunnerFailure("unsupported_input", "cannot generate input of dtype %s" % dtype)


def to_input_dtype(x, detail, numpy):
    """Quantize float data with the input's scale/zero point, or cast it, for set_tensor."""
    dtype = numpy.dtype(detail["dtype"])
    if x.dtype == dtype:
        return x
    scale, zero = quant_params(detail)
    if dtype.kind in "iu" and x.dtype.kind == "f" and scale > 0:
        info = numpy.iinfo(dtype)
        q = numpy.round(x.astype(numpy.float64) / scale + zero)
        return numpy.clip(q, info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize(y, detail, numpy):
    """Output values as float32, undoing the output's quantization if it has one."""
    scale, zero = quant_params(detail)
    if numpy.dtype(detail["dtype"]).kind in "iu" and scale > 0:
        return ((y.astype(numpy.float32) - zero) * scale).astype(numpy.float32)
    return y.astype(numpy.float32)


# --------------------------------------------------------------------------- signature

def _plain_name(name, prefix):
    name = str(name or "")
    if name.startswith(prefix):
        name = name[len(prefix):]
    return name.split(":")[0]


def signature_io(interpreter):
    """([(input name, detail)], [(output name, detail)]) named as the Keras model named them.

    The serving signature maps the Keras input and output names to tensors; a runtime without
    signature support falls back to the tensor names (minus the ``serving_default_`` prefix).
    Scoring (accuracy, MSE) is not done here: the controller scores the raw outputs with
    ``edgeprune.device.metrics``, the one definition.
    """
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    sig = None
    try:
        full = interpreter._get_full_signature_list() or {}
        sig = full.get("serving_default") or (list(full.values())[0] if len(full) == 1 else None)
    except Exception:
        sig = None
    if sig:
        by_in = dict((d["index"], d) for d in inputs)
        by_out = dict((d["index"], d) for d in outputs)
        ins = [(name, by_in[i]) for name, i in sig.get("inputs", {}).items() if i in by_in]
        outs = [(name, by_out[i]) for name, i in sig.get("outputs", {}).items() if i in by_out]
        if len(ins) == len(inputs) and len(outs) == len(outputs):
            order = dict((d["index"], k) for k, d in enumerate(outputs))
            return ins, sorted(outs, key=lambda item: order[item[1]["index"]])
    ins = [(_plain_name(d["name"], "serving_default_") or "input_%d" % k, d) for k, d in enumerate(inputs)]
    outs = [("output_%d" % k, d) for k, d in enumerate(outputs)]
    return ins, outs


# --------------------------------------------------------------------------- CompiledModel

RUNTIME_API_ENV = "EDGEPRUNE_RUNTIME_API"
RUNTIME_APIS = ("auto", "compiled_model", "interpreter")


class CompiledModelSession(object):
    """LiteRT's ``CompiledModel`` behind the few ``Interpreter`` methods the timing and eval code call.

    Why: LiteRT 2.x recommends ``CompiledModel`` (the ``Interpreter`` stays for compatibility),
    so latency is measured with it where the installed ai-edge-litert has it; keeping the
    Interpreter's method names lets bench_threads, bench_protocol, time_model and run_eval
    serve both APIs unchanged.

    What it cannot do, and who does it instead (ai-edge-litert 2.3):
    - Quantization parameters and dynamic dimensions (``shape_signature``) are not in its
      tensor details, so an Interpreter is built once, unallocated, to read them.
    - Resizing: ``resize_input_tensor`` left the output details and buffers at the old shape,
      and running then wrote past the output buffer (heap corruption). ``can_resize`` is
      False, so run_eval feeds one allocated batch (usually one sample) per run.
    - Intermediate tensors (per-layer quantization error, ``dump_tensors``) and the crash
      probe (``probe_model``) use the Interpreter: CompiledModel exposes inputs and outputs only.
    """

    api = "CompiledModel"
    can_resize = False

    def __init__(self, model_path=None, model_content=None, num_threads=1):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.interpreter import Interpreter
        from ai_edge_litert.options import CpuOptions, Options

        meta = Interpreter(model_path=model_path, model_content=model_content)
        by_index = dict((d["index"], d) for d in meta.get_input_details() + meta.get_output_details())
        # The Interpreter's signature names tensors as the Keras model did ("cls", "reg");
        # CompiledModel 2.3 names some outputs by tensor ("Identity", "Identity_1").
        # A file without a signature gets a "<placeholder signature>" from CompiledModel; it
        # reports none, as the Interpreter does, so signature_io names the tensors the same way.
        try:
            meta_signatures = meta._get_full_signature_list() or {}
        except Exception:
            meta_signatures = {}
        self._has_signature = bool(meta_signatures)
        keras_names = dict((i, n) for sig in meta_signatures.values()
                           for part in ("inputs", "outputs") for n, i in sig.get(part, {}).items())
        self._input_order = [d["index"] for d in meta.get_input_details()]
        self._output_order = [d["index"] for d in meta.get_output_details()]
        del meta
        options = Options(cpu_options=CpuOptions(num_threads=int(num_threads or 1)))
        if model_content is not None:
            self._model = CompiledModel.from_buffer(model_content, options=options)
        else:
            self._model = CompiledModel.from_file(model_path, options=options)
        signatures = self._model.get_signature_list()
        self._key = "serving_default" if "serving_default" in signatures else list(signatures)[0]
        names = signatures[self._key]
        ins = self._model.get_input_tensor_details(self._key)
        outs = self._model.get_output_tensor_details(self._key)
        # run_by_index takes buffers in the signature's order; the runner addresses tensors by index
        self._inputs = [(keras_names.get(ins[name]["index"], name), by_index[ins[name]["index"]])
                        for name in names["inputs"]]
        self._outputs = [(keras_names.get(outs[name]["index"], name), by_index[outs[name]["index"]])
                         for name in names["outputs"]]
        self._in_slot = dict((d["index"], k) for k, (_, d) in enumerate(self._inputs))
        self._out_slot = dict((d["index"], k) for k, (_, d) in enumerate(self._outputs))
        self._sig = self._model.get_signature_index(self._key)
        self._in_buffers = self._out_buffers = None

    def allocate_tensors(self):
        self._in_buffers = self._model.create_input_buffers(self._sig)
        self._out_buffers = self._model.create_output_buffers(self._sig)

    def get_input_details(self):
        order = dict((i, k) for k, i in enumerate(self._input_order))
        return sorted((dict(d) for _, d in self._inputs), key=lambda d: order[d["index"]])

    def get_output_details(self):
        order = dict((i, k) for k, i in enumerate(self._output_order))
        return sorted((dict(d) for _, d in self._outputs), key=lambda d: order[d["index"]])

    def _get_full_signature_list(self):
        if not self._has_signature:
            return {}
        return {self._key: {"inputs": dict((n, d["index"]) for n, d in self._inputs),
                            "outputs": dict((n, d["index"]) for n, d in self._outputs)}}

    def resize_tensor_input(self, index, shape):
        raise RunnerFailure("unsupported_resize", "CompiledModel cannot resize inputs here; use the Interpreter")

    def set_tensor(self, index, value):
        slot = self._in_slot[index]
        detail = self._inputs[slot][1]
        want = [int(d) for d in detail["shape"]]
        if list(value.shape) != want or value.dtype != detail["dtype"]:
            raise RunnerFailure("bad_input", "input '%s' wants %s %s, got %s %s" % (
                self._inputs[slot][0], want, detail["dtype"].__name__, list(value.shape), value.dtype))
        self._in_buffers[slot].write(value)

    def invoke(self):
        self._model.run_by_index(self._sig, self._in_buffers, self._out_buffers)

    def get_tensor(self, index):
        detail = self._outputs[self._out_slot[index]][1]
        shape = [int(d) for d in detail["shape"]]
        count = 1
        for d in shape:
            count *= d
        return self._out_buffers[self._out_slot[index]].read(count, detail["dtype"]).reshape(shape)


def choose_api(cls, job, probe=None):
    """``(class, note)``: the class that times and evaluates, CompiledModelSession where
    ai-edge-litert has ``CompiledModel`` and neither the job's ``runtime_api`` nor
    $EDGEPRUNE_RUNTIME_API says "interpreter"; the Interpreter ``cls`` elsewhere (tflite-runtime,
    TensorFlow, old LiteRT). "compiled_model" insists and fails where it is missing.

    Under "auto", CompiledModel must also load ``probe`` (the artifact): on an arm64 Pi,
    ai-edge-litert 2.3's CompiledModel refused an int8 model the Interpreter runs
    ("load_failed"), so that model is measured with the Interpreter and ``note`` says why."""
    wanted = str(job.get("runtime_api") or os.environ.get(RUNTIME_API_ENV) or "auto").strip().lower()
    if wanted not in RUNTIME_APIS:
        raise RunnerFailure("bad_job", "runtime_api '%s' is not one of %s" % (wanted, ", ".join(RUNTIME_APIS)))
    if wanted == "interpreter":
        return cls, None
    available = cls.__module__.startswith("ai_edge_litert")
    if available:
        try:
            import ai_edge_litert.compiled_model  # noqa: F401
        except Exception:
            available = False
    if available and (wanted == "compiled_model" or probe is None):
        return CompiledModelSession, None
    if available:
        try:
            CompiledModelSession(model_path=probe)
            return CompiledModelSession, None
        except Exception as exc:  # noqa: BLE001 - any refusal: the Interpreter is the fallback
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            note = "CompiledModel could not load %s (%s); measured with the Interpreter" % (
                os.path.basename(probe), first)
            log(note)
            return cls, note
    if wanted == "compiled_model":
        raise RunnerFailure("missing_runtime", "runtime_api compiled_model: this runtime (%s) has no CompiledModel; "
                            "install ai-edge-litert >= 2" % cls.__module__.split(".")[0], EXIT_MISSING_DEPENDENCY)
    return cls, None


def api_name(cls):
    """'CompiledModel' or 'Interpreter': which API a result was measured with."""
    return getattr(cls, "api", "Interpreter")


# --------------------------------------------------------------------------- running

def load_interpreter(cls, artifact, threads, model_content=None):
    try:
        if model_content is not None:
            return cls(model_content=model_content, num_threads=threads)
        return cls(model_path=artifact, num_threads=threads)
    except (ValueError, RuntimeError) as exc:
        raise RunnerFailure("load_failed", "the runtime cannot load %s: %s"
                            % (os.path.basename(artifact or "model"), str(exc).strip().splitlines()[0]))


def allocate(interpreter, artifact):
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise RunnerFailure("init_failed", "allocate_tensors failed for %s: %s"
                            % (os.path.basename(artifact or "model"), str(exc).strip().splitlines()[0]))


def summarize(times_s, numpy):
    ms = numpy.asarray(times_s, dtype=numpy.float64) * 1000.0
    if not len(ms):
        return {"count": 0}
    p50, p90, p99 = numpy.percentile(ms, [50, 90, 99])
    return {
        "count": int(len(ms)), "mean_ms": float(ms.mean()), "std_ms": float(ms.std()),
        "min_ms": float(ms.min()), "max_ms": float(ms.max()),
        "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
        "total_s": float(ms.sum() / 1000.0),
    }


def bench_threads(cls, artifact, threads, job, numpy):
    """Load, init, first run, warm-up and steady state for one thread count."""
    gc.collect()
    reset_ok = reset_peak_rss()
    baseline = _status_kb("VmRSS")
    clock = time.perf_counter

    t0 = clock()
    interpreter = load_interpreter(cls, artifact, threads)
    t1 = clock()
    allocate(interpreter, artifact)
    t2 = clock()
    rng = numpy.random.default_rng(int(job.get("seed", 0)))
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_input(detail, rng, numpy))
    t3 = clock()
    interpreter.invoke()
    first = clock() - t3

    warm = []
    for _ in range(int(job.get("warmup", 5))):
        s = clock()
        interpreter.invoke()
        warm.append(clock() - s)

    runs = int(job.get("runs", 50))
    min_duration = float(job.get("min_duration_s", 0.0))
    steady = []
    start = clock()
    while len(steady) < runs or clock() - start < min_duration:
        s = clock()
        interpreter.invoke()
        steady.append(clock() - s)

    peak = _status_kb("VmHWM")
    result = {
        "threads": threads,
        "load_ms": (t1 - t0) * 1000.0,
        "init_ms": (t2 - t1) * 1000.0,
        "first_inference_ms": first * 1000.0,
        "warmup": {"count": len(warm), "mean_ms": (sum(warm) / len(warm) * 1000.0) if warm else None},
        "steady": summarize(steady, numpy),
        "baseline_rss_kb": baseline,
        "peak_rss_kb": peak if peak is not None else max_rss_kb(),
        "peak_rss_is_per_thread_count": bool(reset_ok and peak is not None),
        "process_max_rss_kb": max_rss_kb(),
    }
    del interpreter
    return result


def bench_protocol(cls, artifact, threads, job, numpy):
    """MLPerf Mobile single-stream: ``repeats`` runs of at least ``min_queries`` queries and
    ``min_duration_s`` seconds each, a pause between them; p90 per repeat and the spread."""
    spec = job["protocol"]
    queries, duration = int(spec.get("min_queries", 1024)), float(spec.get("min_duration_s", 60.0))
    repeats, pause = int(spec.get("repeats", 5)), float(spec.get("pause_s", 10.0))
    clock = time.perf_counter
    interpreter = load_interpreter(cls, artifact, threads)
    allocate(interpreter, artifact)
    rng = numpy.random.default_rng(int(job.get("seed", 0)))
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_input(detail, rng, numpy))
    for _ in range(max(1, int(job.get("warmup", 5)))):
        interpreter.invoke()
    rows = []
    for repeat in range(repeats):
        if repeat:
            time.sleep(pause)
        before = device_state()
        times = []
        start = clock()
        while len(times) < queries or clock() - start < duration:
            s = clock()
            interpreter.invoke()
            times.append(clock() - s)
        rows.append({"repeat": repeat + 1, "state_before": before, "state_after": device_state(),
                     **summarize(times, numpy)})
        log("threads %d repeat %d/%d: p90 %.4f ms over %d queries"
            % (threads, repeat + 1, repeats, rows[-1]["p90_ms"], len(times)))
    p90s = [r["p90_ms"] for r in rows]
    median = float(numpy.median(p90s))
    spread = (max(p90s) - min(p90s)) / median * 100.0 if median > 0 else 0.0
    del interpreter
    return {"name": spec.get("name", "mlperf"), "min_queries": queries, "min_duration_s": duration,
            "repeats": rows, "pause_s": pause, "p90_ms": median, "spread_pct": spread,
            "spread_flagged": spread > float(spec.get("max_spread_pct", 5.0))}


def time_model(cls, path, threads, numpy, runs=20, rounds=5):
    """Microseconds per invoke of the (small) model at ``path``; see time_model_interpreter."""
    interpreter = load_interpreter(cls, path, threads)
    allocate(interpreter, path)
    return time_model_interpreter(interpreter, numpy, runs, rounds)


def time_model_interpreter(interpreter, numpy, runs=20, rounds=5):
    """Microseconds per invoke of an allocated interpreter: the fastest of ``rounds`` rounds.

    Each round runs enough invokes for about 2 ms, at most ``runs``, so big layers need few.
    The minimum, not the mean, because a table must not carry the noise of a busy moment.
    """
    rng = numpy.random.default_rng(0)
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], random_input(detail, rng, numpy))
    clock = time.perf_counter
    interpreter.invoke()
    t0 = clock()
    interpreter.invoke()
    first = clock() - t0
    n = max(1, min(int(runs), int(0.002 / max(first, 1e-7)) + 1))
    best = None
    for _ in range(int(rounds)):
        t0 = clock()
        for _ in range(n):
            interpreter.invoke()
        us = (clock() - t0) / n * 1e6
        best = us if best is None else min(best, us)
    return best


def time_models(cls, job, numpy):
    """``time_models`` of a job: [{"name", "us"} or {"name", "error"}] at the job's first thread count."""
    threads = int((job.get("threads") or [1])[0])
    runs, rounds = int(job.get("time_runs", 20)), int(job.get("time_rounds", 5))
    rows = []
    for index, path in enumerate(job["time_models"]):
        try:
            rows.append({"name": os.path.basename(path), "us": time_model(cls, path, threads, numpy, runs, rounds)})
        except RunnerFailure as exc:
            rows.append({"name": os.path.basename(path), "error": exc.message})
        except (RuntimeError, ValueError) as exc:  # the runtime cannot run this one (e.g. an op it lacks)
            rows.append({"name": os.path.basename(path), "error": "%s: %s" % (
                type(exc).__name__, (str(exc).strip().splitlines() or [""])[0][:200])})
        if (index + 1) % 10 == 0:
            log("timed %d/%d models" % (index + 1, len(job["time_models"])))
    return {"threads": threads, "runs": runs, "rounds": rounds, "models": rows}


def run_eval(interpreter, x, numpy, batch=64):
    """Float32 outputs (dequantized) for every row of x.

    x: an array (one input) or a dict keyed by input name. Returns an array for a model with
    one output, else a dict keyed by output name. Uses batches when the model's batch
    dimension is dynamic, one sample (or the fixed batch) at a time otherwise.
    """
    ins, outs = signature_io(interpreter)
    if not isinstance(x, dict):
        if len(ins) != 1:
            raise RunnerFailure("unsupported_eval", "the model has %d inputs (%s): give eval inputs keyed by name"
                                % (len(ins), ", ".join(n for n, _ in ins)))
        x = {ins[0][0]: x}
    missing = [n for n, _ in ins if n not in x]
    if missing:
        raise RunnerFailure("bad_eval_shape", "eval inputs lack %s (the model's inputs: %s)"
                            % (", ".join(missing), ", ".join(n for n, _ in ins)))
    feeds = []
    total = None
    for name, detail in ins:
        data = x[name]
        want = [int(d) for d in detail["shape"]][1:]
        if list(data.shape[1:]) != want:
            raise RunnerFailure("bad_eval_shape", "eval inputs%s have per-sample shape %s, the model expects %s"
                                % ("" if len(ins) == 1 else " '%s'" % name, list(data.shape[1:]), want))
        if total is not None and len(data) != total:
            raise RunnerFailure("bad_eval_shape", "eval inputs have different sample counts")
        total = len(data)
        signature = detail.get("shape_signature")
        dynamic = signature is not None and len(signature) and int(signature[0]) == -1
        feeds.append((detail, data, want, dynamic))
    dynamic = all(f[3] for f in feeds) and getattr(interpreter, "can_resize", True)
    step = batch if dynamic else int(feeds[0][0]["shape"][0]) or 1
    allocated = int(feeds[0][0]["shape"][0])
    chunks = dict((name, []) for name, _ in outs)
    for begin in range(0, total or 0, step):
        n = min(step, total - begin)
        if dynamic and n != allocated:
            for detail, _, want, _ in feeds:
                interpreter.resize_tensor_input(detail["index"], [n] + want)
            interpreter.allocate_tensors()
            allocated = n
        for detail, data, _want, _ in feeds:
            part = data[begin:begin + n]
            if not dynamic and n != step:  # fixed batch > 1: pad the last chunk
                part = numpy.concatenate([part, numpy.repeat(part[-1:], step - n, axis=0)])
            interpreter.set_tensor(detail["index"], to_input_dtype(numpy.ascontiguousarray(part), detail, numpy))
        interpreter.invoke()
        # The output details can only be read after allocation (their shape follows the batch).
        current = dict((d["index"], d) for d in interpreter.get_output_details())
        for name, detail in outs:
            out_detail = current[detail["index"]]
            chunks[name].append(dequantize(interpreter.get_tensor(out_detail["index"]), out_detail, numpy)[:n])
    result = dict((name, numpy.concatenate(parts) if parts else numpy.zeros((0,), numpy.float32))
                  for name, parts in chunks.items())
    return result[outs[0][0]] if len(outs) == 1 else result


def load_npy(path, numpy, what):
    """An .npy array, or an .npz as a dict of arrays (one per input)."""
    try:
        data = numpy.load(path, allow_pickle=False)
        if hasattr(data, "files"):
            with data:
                return dict((k, data[k]) for k in data.files)
        return data
    except Exception as exc:
        raise RunnerFailure("bad_eval_data", "cannot read %s %s: %s" % (what, path, exc))


def save_outputs(outputs, numpy):
    """Outputs as .npy bytes (one output) or .npz bytes keyed by output name."""
    buffer = io.BytesIO()
    if isinstance(outputs, dict):
        numpy.savez(buffer, **outputs)
    else:
        numpy.save(buffer, outputs, allow_pickle=False)
    return buffer.getvalue()


def evaluate(cls, artifact, job, numpy):
    x = load_npy(job["eval_inputs"], numpy, "eval inputs")
    threads = int((job.get("threads") or [1])[0])
    interpreter = load_interpreter(cls, artifact, threads)
    allocate(interpreter, artifact)
    t0 = time.perf_counter()
    outputs = run_eval(interpreter, x, numpy)
    samples = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    shapes = dict((k, list(v.shape)) for k, v in outputs.items()) if isinstance(outputs, dict) else list(outputs.shape)
    result = {"samples": int(samples), "threads": threads, "seconds": time.perf_counter() - t0,
              "outputs_shape": shapes, "num_outputs": len(interpreter.get_output_details())}
    payload = save_outputs(outputs, numpy)
    if job.get("outputs_path"):
        tmp = job["outputs_path"] + ".tmp"
        with open(tmp, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, job["outputs_path"])
        result["outputs_path"] = job["outputs_path"]
    else:
        result["outputs_npy_b64"] = base64.b64encode(payload).decode("ascii")
    return result


def dump_tensors(cls, artifact, job, numpy):
    """Every op output of the artifact on each eval input, for per-layer quantization error.

    Builtin kernels without the default delegate (a delegate fuses its partition and hides the
    intermediates) and experimental_preserve_all_tensors, as edgeprune.quantize.quant_error does locally.
    """
    x = load_npy(job["eval_inputs"], numpy, "eval inputs")
    module = sys.modules.get(cls.__module__)
    resolver = getattr(module, "OpResolverType", None)
    kwargs = {"experimental_preserve_all_tensors": True}
    if resolver is not None and hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = cls(model_path=artifact, num_threads=1, **kwargs)
    except TypeError:  # an old runtime without these options
        raise RunnerFailure("unsupported_dump", "this TFLite runtime cannot preserve intermediate tensors")
    allocate(interpreter, artifact)
    detail = interpreter.get_input_details()[0]
    outs = sorted(set(int(j) for op in interpreter._get_ops_details() for j in op["outputs"] if j >= 0))
    store = dict((t, []) for t in outs)
    for i in range(len(x)):
        interpreter.set_tensor(detail["index"], to_input_dtype(numpy.ascontiguousarray(x[i:i + 1]), detail, numpy))
        interpreter.invoke()
        for t in outs:
            store[t].append(numpy.array(interpreter.get_tensor(t)))
    buffer = io.BytesIO()
    numpy.savez(buffer, **dict(("t%d" % t, numpy.stack(v)) for t, v in store.items()))
    return {"samples": int(len(x)), "tensors": len(outs),
            "npz_b64": base64.b64encode(buffer.getvalue()).decode("ascii")}


def _zeros(detail, numpy):
    shape = [max(int(d), 1) for d in detail["shape"]]
    return numpy.zeros(shape, numpy.dtype(detail["dtype"]))


def probe_model(cls, artifact, numpy):
    """Load, allocate and invoke once on zero inputs, with the runtime's default delegate and
    with builtin kernels only (every tensor kept), the ways edgeprune's own process loads a model.

    edgeprune.device.tflite_check runs this job in a child before a user's file reaches the
    interpreter in edgeprune's process: a file that crashes the native code kills this process
    only. Returns {"ok": True, ...} or {"ok": False, "stage", "error"}; no core file is written.
    """
    try:  # no core file: neither by size limit nor through a core_pattern pipe (PR_SET_DUMPABLE 0)
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
    except Exception:  # not on this platform
        pass
    module = sys.modules.get(cls.__module__)
    resolver = getattr(module, "OpResolverType", None)
    variants = [{}]
    if resolver is not None and hasattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"):
        variants.append({"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                         "experimental_preserve_all_tensors": True})
    t0 = time.perf_counter()
    for kwargs in variants:
        stage = "load"
        try:
            interpreter = cls(model_path=artifact, num_threads=1, **kwargs)
            stage = "allocate"
            interpreter.allocate_tensors()
            interpreter.get_tensor_details()
            stage = "invoke"
            ins, outs = signature_io(interpreter)
            for _, detail in ins:
                if numpy.dtype(detail["dtype"]).kind != "O":  # strings: left empty
                    interpreter.set_tensor(detail["index"], _zeros(detail, numpy))
            interpreter.invoke()
            for _, detail in outs:
                interpreter.get_tensor(detail["index"])
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            return {"ok": False, "stage": stage,
                    "error": ("%s" % (lines[0] if lines else type(exc).__name__))[:300]}
        del interpreter
    return {"ok": True, "inputs": len(ins), "outputs": len(outs), "variants": len(variants),
            "seconds": time.perf_counter() - t0}


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_job(argv):
    source = argv[1] if len(argv) > 1 else "-"
    try:
        if source == "-":
            text = sys.stdin.read()
        elif source.lstrip().startswith("{"):
            text = source
        else:
            with open(source) as handle:
                text = handle.read()
        job = json.loads(text)
    except (OSError, ValueError) as exc:
        raise RunnerFailure("bad_job", "cannot read the job %s: %s" % (source[:80], exc))
    if not isinstance(job, dict) or not ("artifact" in job or "time_models" in job):
        raise RunnerFailure("bad_job", "the job must be a JSON object with an 'artifact' or 'time_models' key")
    job["_from_stdin"] = source == "-"
    for key, default in (("threads", [1]), ("runs", 50), ("warmup", 5), ("min_duration_s", 0.0), ("seed", 0)):
        if job.get(key) is None:
            job[key] = default
    return job


def watch_stdin():
    """Exit as soon as the controller closes our stdin (it was interrupted or disconnected)."""
    def watch():
        try:
            # os.read, not sys.stdin: a daemon thread blocked inside the buffered reader's
            # lock makes the interpreter abort at shutdown.
            while os.read(0, 65536):
                pass
        except Exception:
            pass
        try:  # stderr may be a dead pipe too (the connection dropped)
            log("controller went away (stdin closed); stopping")
        except Exception:
            pass
        os._exit(130)

    thread = threading.Thread(target=watch, name="stdin-watch")
    thread.daemon = True
    thread.start()


def run(job):
    numpy = import_numpy()
    artifact = job.get("artifact")
    if artifact is not None and not os.path.isfile(artifact):
        raise RunnerFailure("missing_artifact", "artifact %s not found on the device" % artifact)
    if job.get("probe"):
        if artifact is None:
            raise RunnerFailure("bad_job", "a probe job needs an 'artifact'")
        runtime, version, cls = find_runtime()
        return {"runner_version": 2, "runtime": runtime, "runtime_version": version,
                "probe": probe_model(cls, artifact, numpy)}
    for path in job.get("time_models") or ():
        if not os.path.isfile(path):
            raise RunnerFailure("missing_artifact", "model %s not found on the device" % path)
    probe = artifact or (job.get("time_models") or [None])[0]
    runtime, version, cls = find_runtime(probe=probe)
    api, api_note = choose_api(cls, job, probe)  # latency and eval; intermediates stay on the Interpreter
    threads_list = [int(t) for t in (job.get("threads") or [1])]
    label = "%s %s %s" % (runtime, version, api_name(api))
    log("runtime %s, numpy %s; artifact %s" % (label, numpy.__version__, artifact))
    device = device_info(runtime, version, numpy)
    device["runtime_api"] = api_name(api)
    if api_note:
        device["runtime_api_note"] = api_note
    device["benchmark_model"] = find_benchmark_model(job)
    result = {
        "runner_version": 2,
        "runtime": label,
        "device": device,
        "state_before": device_state(),
        "job": {k: job.get(k) for k in ("threads", "runs", "warmup", "min_duration_s", "seed", "protocol")},
        "results": [],
    }
    if artifact is not None:
        result["artifact"] = {"name": os.path.basename(artifact), "bytes": os.path.getsize(artifact),
                              "sha256": sha256_file(artifact)}
        if job.get("dump_tensors"):
            log("running %s with every intermediate tensor kept" % job["eval_inputs"])
            result["dump"] = dump_tensors(cls, artifact, job, numpy)
            return result
        for threads in threads_list:
            log("benchmarking with %d thread(s)" % threads)
            row = bench_threads(api, artifact, threads, job, numpy)
            if job.get("protocol"):
                row["protocol"] = bench_protocol(api, artifact, threads, job, numpy)
            result["results"].append(row)
        if job.get("eval_inputs"):
            log("evaluating %s" % job["eval_inputs"])
            result["eval"] = evaluate(api, artifact, job, numpy)
    if job.get("time_models"):
        log("timing %d models" % len(job["time_models"]))
        result["timings"] = time_models(api, job, numpy)
    result["state_after"] = device_state()
    return result


def main(argv=None):
    argv = sys.argv if argv is None else argv
    try:
        job = read_job(argv)
        if job.get("watch_stdin") and not job["_from_stdin"]:
            watch_stdin()
        payload, code = run(job), 0
    except RunnerFailure as exc:
        log("error: %s" % exc.message)
        payload, code = {"error": {"kind": exc.kind, "message": exc.message}}, exc.code
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
