"""The operator interface every canonical node implements.

An operator computes its node's output from its structural inputs (the *operands*),
batched along a leading axis. At an input `x` it is frozen into a `LocalMap`, the
node's local affine form `h = A(u) + b` (docs/math.md §2): ``apply`` is `A`, ``bias`` is the
local bias `b_v^x`, ``vjp`` is `A^T`. Gates and routes also ``hand_back`` bias mass
to their single structural input per output element (docs/math.md §4). Affine operators
expose their linear coefficients so that attribution rules can rerun them with
transformed coefficients (|W|, max(W, 0), a 0/1 connectivity kernel, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import numpy as np

Array = np.ndarray
CoefficientMap = Callable[[Array], Array]

AFFINE = "affine"
GATE = "gate"
ROUTE = "route"
# Kinds of the tangent model (docs/math.md §7): not piecewise linear, exact only at the point.
SMOOTH = "smooth"
PRODUCT = "product"
PIECEWISE_LINEAR_KINDS = frozenset({AFFINE, GATE, ROUTE})


class DomainError(ArithmeticError):
    """An operator met a value outside its domain (Log of a non-positive number, a
    Reciprocal of 0, an infinite derivative) or an overflow. The engine's trace turns it
    into an `InputError` that names the node."""


class Pullback(ABC):
    """What the reverse pass needs of a node: its vector-Jacobian product (a local map,
    or a map that exists only backwards, such as DeepLIFT's multipliers)."""

    @abstractmethod
    def vjp(self, grad: Array) -> list[Array]:
        """`A^T g`: one gradient per operand."""


class LocalMap(Pullback):
    """A node frozen at one input: `h = apply(u) + bias`."""

    kind: ClassVar[str]

    @property
    def bias(self) -> Array | None:
        """The local bias `b_v^x`, broadcastable to the batched output; None means 0."""
        return None

    @abstractmethod
    def apply(self, operands: Sequence[Array]) -> Array:
        """The linear part `A(u)` of the local map."""


class SingleInputMap(LocalMap):
    """A frozen gate or route: each output element reads one input element."""

    @abstractmethod
    def hand_back(self, mass: Array) -> list[Array]:
        """Each output element hands all of its bias mass to its one structural input
        element (docs/math.md §4), whatever the rule."""


class Operator(ABC):
    """The computation of one canonical node (batched, float64)."""

    kind: ClassVar[str]

    @property
    def has_bias(self) -> bool:
        return False

    @abstractmethod
    def forward(self, operands: Sequence[Array]) -> Array:
        """The op's own semantics, as ONNX defines them."""

    @abstractmethod
    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        """Freeze the node at these operand values."""

    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        """`forward` and `linearize` at once (gates override it to share their work)."""
        return self.forward(operands), self.linearize(operands)


class TangentOperator(Operator):
    """An operator frozen at the point (docs/math.md §7): its value and local map come
    from one computation, ``evaluate``; ``forward`` and ``linearize`` take the part they
    need. Its local bias (a tangent intercept) is in general non-zero."""

    @property
    def has_bias(self) -> bool:
        return True

    @abstractmethod
    def evaluate(self, operands: Sequence[Array]) -> tuple[Array, LocalMap]:
        """The value and the local map at ``operands``."""

    def forward(self, operands: Sequence[Array]) -> Array:
        return self.evaluate(operands)[0]

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return self.evaluate(operands)[1]


class RouteOperator(Operator, SingleInputMap):
    """A fixed permutation or selection of elements: it is its own local map."""

    kind = ROUTE

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return self

    def apply(self, operands: Sequence[Array]) -> Array:
        return self.forward(operands)

    def hand_back(self, mass: Array) -> list[Array]:
        return self.vjp(mass)


class AffineOperator(Operator):
    """`h = A(u_1, ..., u_k) + b` with `A` linear in its coefficients and operands.

    Subclasses set ``coefficients`` (the arrays `A` is made of, in one fixed order) and
    ``bias``, and implement ``linear``, ``vjp`` and ``with_coefficients``.
    """

    kind = AFFINE
    coefficients: tuple[Array, ...]
    bias: Array | None

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @abstractmethod
    def linear(self, operands: Sequence[Array]) -> Array:
        """`A(u)`."""

    @abstractmethod
    def vjp(self, grad: Array) -> list[Array]:
        """`A^T g`, one array per operand."""

    @abstractmethod
    def with_coefficients(self, coefficients: tuple[Array, ...]) -> AffineOperator:
        """The same operator with other coefficients and no bias."""

    def rule_view(self) -> AffineOperator:
        """The operator whose coefficients the attribution rules score. It is the operator
        itself, except where some outputs depend on no operand (docs/math.md §7,
        "elements that depend on no input"): there the rules see those outputs connected
        to every operand element with coefficient 1."""
        return self

    def map_coefficients(self, fn: CoefficientMap) -> AffineOperator:
        """The operator with ``fn`` applied to each coefficient array. Not cached: a
        mapped copy of a large layer lives only while its node hands out mass."""
        return self.with_coefficients(tuple(np.asarray(fn(c)) for c in self.coefficients))

    def linear_many(self, operators: Sequence[AffineOperator],
                    operands: Sequence[Array]) -> list[Array]:
        """`A_i(u)` for several copies of this operator with other coefficients
        (``map_coefficients``) on the same operands; a subclass may share the work that
        does not depend on the coefficients (a convolution gathers its windows once)."""
        return [op.linear(operands) for op in operators]

    def vjp_sum(self, operators: Sequence[AffineOperator],
                grads: Sequence[Array]) -> list[Array]:
        """`sum_i A_i^T g_i` for several copies of this operator with other coefficients,
        one array per operand."""
        return sum_parts(op.vjp(grad) for op, grad in zip(operators, grads))

    def forward(self, operands: Sequence[Array]) -> Array:
        out = self.linear(operands)
        return out if self.bias is None else out + self.bias

    def linearize(self, operands: Sequence[Array]) -> LocalMap:
        return AffineLocal(self, operands)


class AffineLocal(LocalMap):
    """An affine node at an input: its operator plus the operand values `u` that the
    attribution rules need."""

    kind = AFFINE

    def __init__(self, operator: AffineOperator, operands: Sequence[Array]) -> None:
        self.operator = operator
        self.operands = tuple(operands)

    @property
    def bias(self) -> Array | None:
        return self.operator.bias

    def apply(self, operands: Sequence[Array]) -> Array:
        return self.operator.linear(operands)

    def vjp(self, grad: Array) -> list[Array]:
        return self.operator.vjp(grad)


def sum_parts(parts: Iterable[Sequence[Array]]) -> list[Array]:
    """The element-wise sum of several vector-Jacobian products (one array per operand
    each). One product is returned as it is; for several, the sum is a new array per
    operand (the first product is copied, not added into)."""
    products = [list(part) for part in parts]
    if len(products) == 1:
        return products[0]
    total = [np.array(p) for p in products[0]]
    for part in products[1:]:
        for acc, p in zip(total, part):
            acc += p
    return total


def reduce_to_shape(grad: Array, shape: tuple[int, ...]) -> Array:
    """Sum a batched gradient over the axes along which an operand of batched shape
    ``shape`` was broadcast (the transpose of NumPy broadcasting)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad
