"""edgeprune: prune, quantize and lower Keras models to TFLite for named edge devices.

The public Python API mirrors the CLI; each function lives in its own module and is
imported lazily so that ``import edgeprune`` stays cheap (TensorFlow takes seconds).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> "module:attribute"; resolved on first access.
_API = {
    "compile": "edgeprune.pipelines.compile:compile",
    "bench": "edgeprune.device.api:bench",
    "prune": "edgeprune.pipelines.prune:prune",
    "latency_table": "edgeprune.pruning.device_timer:latency_table",
    "emulate": "edgeprune.device.emulated:prepare",
    "prune_model": "edgeprune.pruning.api:prune_model",
    "register_rule": "edgeprune.pruning.rules:register_rule",
    "LayerRule": "edgeprune.pruning.rules:LayerRule",
    "load_model": "edgeprune.load.model_io:load_model",
    "save_model": "edgeprune.load.model_io:save_model",
    "load_profile": "edgeprune.device.profiles:load_profile",
    "list_profiles": "edgeprune.device.profiles:list_profiles",
    "demo": "edgeprune.pipelines.demo:run_demo",
    "render_report": "edgeprune.ship.report:render_report",
    "inspect": "edgeprune.quantize.inspection:inspect",
    "quant_error": "edgeprune.quantize.quant_error:quant_error",
    "verify": "edgeprune.ship.verification:verify",
    "pack": "edgeprune.ship.bundle:pack",
    "unpack": "edgeprune.ship.bundle:unpack",
    "search": "edgeprune.search.run:search",
    "sensitivity": "edgeprune.search.sensitivity:sensitivity",
    "compile_from_study": "edgeprune.search.ship:compile_from_study",
    "load_arrays": "edgeprune.load.datasets:load_arrays",
    "evaluate_tflite": "edgeprune.device.api:evaluate_tflite",
    "score_outputs": "edgeprune.device.metrics:metrics",
    "compare_accuracy": "edgeprune.device.metrics:compare",
    "check_budgets": "edgeprune.device.budgets:check",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
