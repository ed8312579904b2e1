"""The float64 engine: operators in operator form, the forward trace, the reverse pass."""
