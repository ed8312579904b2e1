"""The planted-bug tools (tools/plant_bugs.py, tools/plant_everyday_bugs.py) edit one line of
the source per bug; each line they look for must be there exactly once, or the bug would
not be planted (the tools refuse to run then) and docs/testing.md's table would go stale."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import plant_bugs  # noqa: E402
import plant_everyday_bugs  # noqa: E402


def _bugs():
    for module in (plant_bugs, plant_everyday_bugs):
        for name, value in sorted(vars(module).items()):
            if isinstance(value, list) and value and hasattr(value[0], "old"):
                for bug in value:
                    yield pytest.param(bug, id=f"{module.__name__}.{name}: {bug.name}")


@pytest.mark.parametrize("bug", list(_bugs()))
def test_each_planted_bug_finds_its_line_once(bug):
    path = ROOT / (getattr(bug, "path", None) or bug.file)
    assert path.read_text().count(bug.old) == 1
    assert bug.new != bug.old
