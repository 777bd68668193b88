"""Load: model files of either Keras flavour (``model_io``), data of every use (``datasets``) and
``--input-shape`` (``shapes``)."""
