"""The ground floor: errors and exit codes, TensorFlow's environment, console output, resource
limits, bundled folders, YAML and Python-file readers, and atomic artifact writing. It imports
nothing else of edgeprune."""
