"""Conversion of trained models into device variants, and their measurement.

One module per target format. Heavy packages (TensorFlow, onnxruntime, skl2onnx,
emlearn, tflite-micro) are imported inside the functions that need them, and a
missing one raises :class:`edgeops.errors.MissingExtra` naming the extra to install.
"""
