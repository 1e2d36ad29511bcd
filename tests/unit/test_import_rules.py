"""The import rules of DESIGN.md, checked on the source: pure cores import no I/O library (directly or
through another project module), `agent` and `p2p` never import `controller`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = {"wgmesh", "wire", "keys", "controller", "agent", "p2p", "lab"}
IO_LIBRARIES = {
    "asyncio",
    "socket",
    "pyroute2",
    "httpx",
    "fastapi",
    "starlette",
    "uvicorn",
    "websockets",
    "sqlalchemy",
    "sqlite3",
    "subprocess",
}
# Pure cores, as module-name prefixes (a package prefix covers its submodules).
PURE_CORES = [
    "wire",
    "keys.types",
    "controller.topology",
    "controller.routing",
    "controller.netmap",
    "agent.reconcile",
    "agent.uapi",
    "agent.desired",
    "agent.links",
    "agent.backoff",
    "agent.status",
    "agent.core",
    "agent.actions",
    "agent.mapsession",
    "agent.connection",
    "agent.hostnet.base",
    "agent.hostnet.fake",
    "agent.settings",
    "p2p.core",
]
# package -> packages it must never import
FORBIDDEN_PACKAGES = {
    "agent": {"controller"},
    "p2p": {"controller", "agent"},
    "wire": {"controller", "agent"},
    "keys": {"controller", "agent"},
}


def module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg in PROJECT_PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = module_files()
IMPORTS = {name: imports_of(path) for name, path in MODULES.items()}


def is_pure(module: str) -> bool:
    return any(module == core or module.startswith(core + ".") for core in PURE_CORES)


def project_deps(module: str) -> set[str]:
    """Project modules reachable from `module` through the imports it names. An ancestor package's
    `__init__` (which may re-export a transport for users' convenience) is not the core's code."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in IMPORTS.get(current, set()):
            # `from pkg.mod import name`: the deepest project module the name denotes
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in MODULES:
                    todo.append(candidate)
                    break
    return seen


def test_the_pure_cores_exist():
    assert any(is_pure(m) for m in MODULES if m.startswith("wire"))
    assert "keys.types" in MODULES


@pytest.mark.parametrize("module", sorted(m for m in MODULES if is_pure(m)))
def test_pure_core_imports_no_io(module):
    offenders = {
        f"{dep} imports {name}"
        for dep in project_deps(module)
        for name in IMPORTS[dep]
        if name.split(".")[0] in IO_LIBRARIES
    }
    assert not offenders, f"{module} is a pure core but reaches I/O: {sorted(offenders)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_role_boundaries(module):
    banned = FORBIDDEN_PACKAGES.get(module.split(".")[0], set())
    bad = sorted(name for name in IMPORTS[module] if name.split(".")[0] in banned)
    assert not bad, f"{module} must not import {sorted(banned)}, but imports {bad}"


def test_the_checker_sees_a_violation(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import asyncio\nfrom pyroute2 import IPRoute\nfrom controller.app import x\n")
    assert {"asyncio", "pyroute2", "controller.app"} <= imports_of(src)
