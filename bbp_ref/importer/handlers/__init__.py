"""One handler per ONNX op (or op family), registered by op type. Importing this
package registers them all."""

from . import (  # noqa: F401
    activations,
    conv,
    conv_transpose,
    einsum,
    elementwise,
    heads,
    linear,
    norm_reductions,
    normalization,
    pad,
    pooling,
    predicates,
    recurrent,
    resize,
    routes_more,
    selection,
    shapes,
    smooth,
)
