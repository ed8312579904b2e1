"""`engine.memory`: freed memory kept for reuse while a public call runs, glibc's malloc
settings restored and the memory given back when the outermost call returns."""

import numpy as np
import pytest
from architectures import ARCHITECTURES

import bbp_ref
from bbp_ref.engine import memory


class RecordingLibc:
    """Stands in for glibc: records the mallopt and malloc_trim calls."""

    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def _settings(values):
    return [("mallopt", parameter, value) for parameter, value in values]


@pytest.fixture
def libc(monkeypatch):
    fake = RecordingLibc()
    monkeypatch.setattr(memory, "_LIBC", fake)
    return fake


def test_nested_calls_set_the_working_values_once_and_restore_once(libc):
    with memory.keeping_freed_memory():
        assert libc.calls == _settings(memory.WORKING)
        with memory.keeping_freed_memory():
            pass
        assert libc.calls == _settings(memory.WORKING)
    assert libc.calls == (_settings(memory.WORKING) + _settings(memory.AFTERWARDS)
                          + [("malloc_trim", 0)])


def test_an_exception_still_restores(libc):
    with pytest.raises(ZeroDivisionError), memory.keeping_freed_memory():
        1 / 0  # noqa: B018
    assert libc.calls[-1] == ("malloc_trim", 0)
    with memory.keeping_freed_memory():
        assert libc.calls[-1] == _settings(memory.WORKING)[-1]


def test_the_public_calls_keep_freed_memory(libc):
    rng = np.random.default_rng(0)
    proto, shape = ARCHITECTURES["cnn"](rng)
    model = bbp_ref.load(proto)
    x = rng.normal(size=shape).astype(np.float32)
    for call in (lambda: bbp_ref.explain(model, x), lambda: model.forward(x),
                 lambda: model.jacobian(x), lambda: bbp_ref.gradient(model, x),
                 lambda: bbp_ref.integrated_gradients(model, x, n_steps=4,
                                                      method="riemann_middle")):
        libc.calls.clear()
        call()
        assert libc.calls == (_settings(memory.WORKING) + _settings(memory.AFTERWARDS)
                              + [("malloc_trim", 0)])


def test_glibc_is_found_here_and_the_variable_turns_it_off(monkeypatch):
    import platform

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert memory._glibc() is not None
    monkeypatch.setenv("BBP_KEEP_FREED_MEMORY", "0")
    assert memory._glibc() is None


def test_without_glibc_nothing_is_called(monkeypatch):
    monkeypatch.setattr(memory, "_LIBC", None)
    with memory.keeping_freed_memory():
        pass
