"""Independent checks of the engine: onnxruntime cross-checks and the SPEC §5 residuals."""
