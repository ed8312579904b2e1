"""ONNX importer: reads a model and builds the canonical piecewise-linear graph."""
