"""What the front door says without PyTorch: a ``torch.nn.Module`` is recognised without
importing torch, and a missing torch is an `InputError` that names the extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import bbp_ref
from bbp_ref.importer.torch_export import is_torch_module

# A class that looks like torch.nn.Module by its qualified name, for a machine without torch.
FakeModule = type("Module", (), {"__module__": "torch.nn.modules.module"})


class Net(FakeModule):  # type: ignore[valid-type, misc]
    pass


def test_a_module_is_recognised_by_its_class_names():
    assert is_torch_module(Net())
    assert not is_torch_module(object()) and not is_torch_module("model.onnx")


@pytest.mark.parametrize("call", [
    lambda x: bbp_ref.explain(Net(), x),
    lambda x: bbp_ref.load(Net(), example=x),
    lambda x: bbp_ref.gradient(Net(), x),
    lambda x: bbp_ref.integrated_gradients(Net(), x, method="gausslegendre"),
    lambda x: bbp_ref.oracle.compare(Net(), x, {"gradient": x}),
], ids=["explain", "load", "gradient", "integrated_gradients", "oracle.compare"])
def test_without_torch_a_module_is_an_input_error_naming_the_extra(monkeypatch, call):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" raises ImportError
    with pytest.raises(bbp_ref.InputError, match=r'pip install "bbp_ref\[torch\]"'):
        call(np.zeros((1, 4), np.float32))
