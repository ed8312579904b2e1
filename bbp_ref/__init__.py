"""bbp_ref: the reference implementation of Bias Backpropagation (BBp) for
piecewise-linear networks exported to ONNX.

At an input `x` such a network is exactly affine, `f(x) = W^x x + b^x`; bbp_ref
computes `W^x`, `b^x` and the bias attribution `B(x)` with
`sum_q (W^x[t, q] x[q] + B(x)[q]) = f_t(x)` in float64 (see docs/math.md).
"""

from . import oracle
from .attribution.baselines import Attribution, deeplift, gradient, gradient_x_input
from .attribution.integrated_gradients import integrated_gradients
from .attribution.rules import NodeView, Rule, Term
from .checks.onnxruntime_check import first_divergence
from .dataset import DatasetRun, explain_dataset
from .errors import BBpError, InputError, ModelLoadError, RuleError, UnsupportedOpError
from .explain import Explanation, explain
from .model import Model, NodeInfo, load

__version__ = "0.1.0"

__all__ = [
    "Attribution", "BBpError", "DatasetRun", "Explanation", "InputError", "Model",
    "ModelLoadError", "NodeInfo", "NodeView", "Rule", "RuleError", "Term",
    "UnsupportedOpError", "deeplift", "explain", "explain_dataset", "first_divergence",
    "gradient", "gradient_x_input", "integrated_gradients", "load", "oracle",
]
