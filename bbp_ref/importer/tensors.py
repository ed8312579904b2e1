"""Every field of an ONNX model that carries a tensor, wherever it sits: initializers,
sparse initializers, the attributes of every node (``value``, ``sparse_value``,
``tensors``, ...), in every subgraph, every local function and every training graph.

The guards of the loader (external data, NaN attributes, sparse tensors) walk this
list, so that no tensor reaches `onnx.reference` or onnxruntime unchecked.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """Each dense tensor of the model (a sparse tensor's values and indices included),
    with a description of where it sits for error messages."""
    for sparse, where in all_sparse_tensors(model):
        yield sparse.values, f"the values of {where}"
        yield sparse.indices, f"the indices of {where}"
    for owner in _attribute_owners(model):
        for attribute, where in owner:
            if attribute.HasField("t"):
                yield attribute.t, where
            for tensor in attribute.tensors:
                yield tensor, where
    for graph, _ in _graphs(model):
        for tensor in graph.initializer:
            yield tensor, f"initializer {tensor.name!r}"


def all_sparse_tensors(
        model: onnx.ModelProto) -> Iterator[tuple[onnx.SparseTensorProto, str]]:
    for graph, _ in _graphs(model):
        for sparse in graph.sparse_initializer:
            yield sparse, f"sparse initializer {sparse.values.name!r}"
    for owner in _attribute_owners(model):
        for attribute, where in owner:
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor, where
            for sparse in attribute.sparse_tensors:
                yield sparse, where


def all_attributes(model: onnx.ModelProto) -> Iterator[tuple[onnx.AttributeProto, str]]:
    """Every attribute of every node (and every function's attribute default)."""
    for owner in _attribute_owners(model):
        yield from owner


def _attribute_owners(
        model: onnx.ModelProto) -> Iterator[Iterator[tuple[onnx.AttributeProto, str]]]:
    for graph, _ in _graphs(model):
        for node in graph.node:
            yield _node_attributes(node)
    for function in model.functions:
        for node in function.node:
            yield _node_attributes(node)
        yield ((a, f"attribute {a.name!r} of function {function.name!r}")
               for a in function.attribute_proto)


def _node_attributes(node: onnx.NodeProto) -> Iterator[tuple[onnx.AttributeProto, str]]:
    for attribute in node.attribute:
        yield attribute, f"attribute {attribute.name!r} of node {node.name!r} ({node.op_type})"


def _graphs(model: onnx.ModelProto) -> Iterator[tuple[onnx.GraphProto, str]]:
    """The main graph, the training graphs, and every subgraph of any of them or of a
    function (a Loop body, an If branch), depth first, without recursion limits."""
    roots: list[onnx.GraphProto] = [model.graph]
    for info in model.training_info:
        roots += [info.initialization, info.algorithm]
    stack = list(roots)
    nodes = [n for f in model.functions for n in f.node]
    stack += [g for n in nodes for g in _subgraphs(n)]
    while stack:
        graph = stack.pop()
        yield graph, graph.name
        for node in graph.node:
            stack.extend(_subgraphs(node))


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    found = []
    for attribute in node.attribute:
        if attribute.HasField("g"):
            found.append(attribute.g)
        found.extend(attribute.graphs)
    return found
