"""Quantize: Keras -> ``.tflite`` (``convert``), selective float ops (``selective``), the int8
error per tensor (``quant_error``), TFLite metadata, MCU checks (``tflm``) and reading a
``.tflite`` back (``inspection``)."""
