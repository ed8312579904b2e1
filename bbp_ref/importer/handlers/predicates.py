"""IsNaN of a data tensor: a constant False (docs/math.md §7.5).

The engine refuses a point where any node's value is not finite (`InputError`), so at
every point it explains IsNaN of a computed tensor is false everywhere: a constant, as
exact as folding. PyTorch's scaled_dot_product_attention with a bool mask writes
``Where(IsNaN(softmax), 0, softmax)`` to guard rows that are masked entirely; the
Where then copies the softmax (a route), and such rows are refused at the Softmax.
"""

from __future__ import annotations

import numpy as np

from ..context import OWN_BATCH_AXIS, NodeContext, handler
from ..values import Const


@handler("IsNaN", batch_axis=OWN_BATCH_AXIS, merged_batch=True, masked_input=True)
def is_nan(ctx: NodeContext) -> list[Const]:
    return [Const(np.zeros(ctx.var(0).onnx_shape, dtype=bool))]
