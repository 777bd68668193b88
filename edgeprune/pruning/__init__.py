"""Structured pruning for Keras: remove whole filters, channels and neurons, rewire consumers.

graph.py traces the model (Keras 3 or tf_keras), rules/ knows each layer type (a registry users
extend with ``register_rule``), groups.py finds the channels that
must go together, importance.py scores them, allocation.py decides how many each group keeps,
surgery.py rebuilds the smaller model, macs.py counts MACs and parameters, api.py ties it up.
Import cost is low: TensorFlow loads only when a function runs.
"""
from edgeprune.pruning.api import PruneResult, prune, prune_model  # noqa: F401
from edgeprune.pruning.importance import CRITERIA  # noqa: F401
from edgeprune.pruning.rules import LayerRule, register_rule  # noqa: F401
