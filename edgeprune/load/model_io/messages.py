"""The one line of a loader's exception that goes into edgeprune's own error message.

Every loader (Keras 3, tf_keras, legacy HDF5, SavedModel) wraps what its library raised in one
InputError line naming the file; this is the one place that picks the line, so every loader
names the real cause the same way.
"""
from __future__ import annotations

_MAX_CHARS = 300
_KERAS_CAUSE = "Exception encountered:"


def cause_line(exc: BaseException) -> str:
    """The line of ``exc`` that names the problem: its first line, or for Keras' nested
    deserialization errors (whose first line is generic advice about ``from_config``) the
    innermost "Exception encountered:", which names the layer's own complaint; at most 300
    characters, the exception's class name if it says nothing."""
    text = str(exc).strip()
    causes = [line.split(_KERAS_CAUSE, 1)[1].strip() for line in text.splitlines() if _KERAS_CAUSE in line]
    if causes and causes[-1]:
        text = causes[-1]
    return text.splitlines()[0][:_MAX_CHARS] if text else type(exc).__name__
