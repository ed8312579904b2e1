"""The docs match the code: the op table lists exactly the ops with a handler, and the
README's commands are the ones CI runs."""

import re
from pathlib import Path

from bbp_ref.importer.context import supported_ops

ROOT = Path(__file__).resolve().parent.parent


def test_onnx_support_table_lists_exactly_the_supported_ops():
    text = (ROOT / "docs" / "onnx-support.md").read_text()
    listed = set(re.findall(r"^\| (\w+) \|", text, flags=re.MULTILINE)) - {"op"}
    assert listed == set(supported_ops())


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = 'pip install -q -e ".[test]" && python -m pytest -q'
    assert 'pip install -e ".[test]" && python -m pytest -q' in readme
    assert test_command in ci


def _onnx_support_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_onnx_support", ROOT / "tools" / "make_onnx_support.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onnx_support_table_is_generated_and_every_op_has_a_kind():
    """docs/onnx-support.md is what tools/make_onnx_support.py writes now, and every
    supported op has a declared kind (a new handler adds its op to the tool's KINDS)."""
    tool = _onnx_support_tool()
    without_kind = [op for op in supported_ops() if tool.kind_of(op) == "?"]
    assert not without_kind, f"add these ops to KINDS in tools/make_onnx_support.py: {without_kind}"
    assert (ROOT / "docs" / "onnx-support.md").read_text() == tool.render(), \
        "run python tools/make_onnx_support.py"


def test_readme_python_example_works_for_one_example_and_a_batch(capsys):
    import numpy as np

    from bbp_ref.defaults import default_input, default_model_path

    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, flags=re.DOTALL).group(1)
    code = example.replace('"model.onnx"', "MODEL")
    assert "MODEL" in code
    for x in (default_input(), np.stack([default_input(), default_input()[:, ::-1]])):
        exec(code, {"MODEL": str(default_model_path()), "x": x})  # noqa: S102 - our README
    assert "checks passed" in capsys.readouterr().out


def test_the_repository_is_self_contained():
    """README, docs and code cite docs/math.md, never a file outside the repository or an
    issue number."""
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.py"),
             *(ROOT / "bbp_ref").rglob("*.py"), *(ROOT / "benchmarks").glob("*.md")]
    pattern = re.compile(r"SPEC\.md|SPEC §|\.\./shared|shared/|[Ii]ssue #?\d+")
    found = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in files
             for match in pattern.finditer(path.read_text())]
    assert found == []
