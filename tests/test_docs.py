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
