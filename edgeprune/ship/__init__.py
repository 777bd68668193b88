"""Ship: what an artifact directory carries beside the ``.tflite`` (metadata, reference sample,
report, layer table: ``hooks``), ``verify`` and ``pack``/``unpack``."""
