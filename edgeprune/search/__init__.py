"""Device-aware search over compile's pipeline (Optuna), sensitivity analysis, and shipping a trial.

- :mod:`.space`: the search space (YAML, Pydantic) and the model's stages
- :mod:`.pipeline`: one trial = ``run_compile`` + accuracy/latency of its artifact
- :mod:`.study`: Optuna storage (heartbeat), samplers, constraints, best/Pareto/pick
- :mod:`.run`: ``search()``: one worker of a (possibly shared) study
- :mod:`.ship`: ``compile --from-study``
- :mod:`.sensitivity`: per-stage curves and the AIMET-style greedy allocation
"""
from edgeprune.search.run import search
from edgeprune.search.space import SpaceConfig, load_space

__all__ = ["search", "SpaceConfig", "load_space"]

import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    """``import edgeprune.search`` binds this package over ``edgeprune.search``; keep it callable."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
