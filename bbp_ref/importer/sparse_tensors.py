"""Sparse tensors made dense at load: a ``sparse_initializer`` becomes an ordinary
initializer and a Constant's ``sparse_value`` an ordinary ``value``, each checked
against the byte budget before the dense array is allocated. The rest of the importer
then sees dense constants only."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import budget
from ..errors import ModelLoadError


def densify(model: onnx.ModelProto) -> None:
    """Replace the main graph's sparse initializers and sparse Constant values by dense
    ones, in place. (Subgraphs are never imported, so theirs stay as they are.)"""
    graph = model.graph
    for sparse in graph.sparse_initializer:
        name = sparse.values.name
        graph.initializer.append(
            numpy_helper.from_array(dense_array(sparse, f"sparse initializer {name!r}"), name))
    del graph.sparse_initializer[:]
    for node in graph.node:
        if node.op_type != "Constant":
            continue
        for attribute in node.attribute:
            if attribute.name == "sparse_value":
                where = f"the sparse_value of Constant node {node.name!r}"
                value = numpy_helper.from_array(dense_array(attribute.sparse_tensor, where))
                attribute.CopyFrom(helper.make_attribute("value", value))


def dense_array(sparse: onnx.SparseTensorProto, where: str) -> np.ndarray:
    """The dense array of ``sparse`` (ONNX: ``values`` of shape [NNZ]; ``indices`` of
    shape [NNZ] (flat) or [NNZ, rank]; ``dims`` the dense shape)."""
    dims = tuple(int(n) for n in sparse.dims)
    if any(n < 0 for n in dims):
        raise ModelLoadError(f"{where} has negative dims {list(dims)}")
    try:
        values = numpy_helper.to_array(sparse.values)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    except Exception as exc:  # noqa: BLE001 - onnx/numpy raise many types here
        raise ModelLoadError(f"{where} cannot be decoded: {exc}") from exc
    budget.check_elements(dims, f"{where} (dense shape {list(dims)})",
                          max(values.dtype.itemsize, 1))
    size = budget.count(dims)
    if values.ndim != 1:
        raise ModelLoadError(f"{where}: values must be one-dimensional")
    flat = None
    if indices.shape == (values.size, len(dims)) and len(dims) > 0 and _in_range(indices, dims):
        flat = np.ravel_multi_index(tuple(indices.T), dims)
    elif indices.shape == (values.size,) and ((indices >= 0) & (indices < size)).all():
        flat = indices
    if flat is None:
        raise ModelLoadError(f"{where}: its indices do not fit its {values.size} values and "
                             f"dense shape {list(dims)}")
    dense = np.zeros(size, dtype=values.dtype)
    dense[flat] = values
    return dense.reshape(dims)


def _in_range(indices: np.ndarray, dims: tuple[int, ...]) -> bool:
    return bool(((indices >= 0) & (indices < np.asarray(dims))).all())
