"""Structured pruning for Keras: remove whole filters, channels and neurons, rewire consumers.

graph.py traces the model (Keras 3 or tf_keras), rules/ knows each layer type (a registry users
extend with ``register_rule``), groups.py finds the channels that
must go together, importance.py scores them, allocation.py decides how many each group keeps,
surgery.py rebuilds the smaller model, macs.py counts MACs and parameters, api.py ties it up.
Import cost is nothing: the names below load their module on first use, so the command line can
import ``edgeprune.pruning.criteria`` without numpy or TensorFlow.
"""
import importlib

_EXPORTS = {"PruneResult": "api", "prune_model": "api", "CRITERIA": "criteria",
            "LayerRule": "rules", "register_rule": "rules"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgeprune.pruning' has no attribute '{name}'")
    return getattr(importlib.import_module(f"edgeprune.pruning.{_EXPORTS[name]}"), name)
