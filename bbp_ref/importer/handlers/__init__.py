"""One handler per ONNX op (or op family), registered by op type. Importing this
package registers them all."""

from . import activations, conv, elementwise, heads, linear, pooling, shapes, smooth  # noqa: F401
