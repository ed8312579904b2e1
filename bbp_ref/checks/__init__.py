"""Independent checks of the engine: onnxruntime cross-checks and the docs/math.md §5 residuals."""
