"""Shared test setup: TF_USE_LEGACY_KERAS must be set before anything imports TensorFlow."""
import edgeprune.base.env  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 and quiet logs)
