"""Pipelines: compositions of the stages in ``stages.py``: ``compile``, ``prune`` and ``demo``."""
