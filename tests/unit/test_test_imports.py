"""The tests' own rule: a test module imports no other test module and no conftest. What tests share
lives in tests/support.py, a root tier's own harness in its harness modules (tests/e2e/harness.py,
tests/netns/harness.py, tests/machines/mesh.py, ...); fixtures come by name from conftest.py. With
random ordering, a module that borrows another's helpers or fixtures is a hidden coupling."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def borrowed(source: str) -> list[str]:
    """The test modules and conftests that `source` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            last = name.split(".")[-1]
            if name.startswith("tests.") and (last.startswith("test_") or last == "conftest"):
                found.append(name)
    return found


def test_no_test_module_imports_another():
    offenders = {
        str(path.relative_to(TESTS.parent)): borrowed(path.read_text())
        for path in sorted(TESTS.rglob("*.py"))
        if path.name.startswith("test_") or path.name == "conftest.py"
    }
    offenders = {path: names for path, names in offenders.items() if names}
    assert offenders == {}, f"import these from tests/support.py or the tier's harness instead: {offenders}"


def test_the_check_sees_a_borrowed_helper():
    source = "from tests.component.test_agent_mesh import Mesh\nimport tests.unit.test_x as x\n"
    assert borrowed(source) == ["tests.component.test_agent_mesh", "tests.unit.test_x"]
    assert borrowed("from tests.unit import test_x\nfrom tests.e2e.conftest import logs\n") == [
        "tests.unit.test_x",
        "tests.e2e.conftest",
    ]
    assert borrowed("from tests.support import eventually\nfrom tests.e2e.harness import logs\n") == []
