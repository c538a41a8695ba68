"""The shape of the code: imports flow one way; our top-level names resolve to this repository."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("intake", "api", "worker", "channels", "models")

# What each package may import of ours. `intake.settings` and `intake.logs` are leaves that
# everyone may use; the rest of `intake` (command line, dev, demo) sits on top of everything.
LEAVES = {"intake.settings", "intake.logs"}
ALLOWED = {
    "models": {"models"},
    "channels": {"channels"},
    "worker": {"worker", "channels", "models", *LEAVES},
    "api": {"api", "worker", "channels", "models", *LEAVES},
    "intake": set(PACKAGES),
}


def _our_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def _allowed(package: str, module: str, imported: str) -> bool:
    if module in LEAVES:
        return imported in LEAVES
    allowed = ALLOWED[package]
    return any(imported == a or imported.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_flow_one_way(package: str) -> None:
    """api -> worker -> channels, models; channels and models import nothing else of ours."""
    offences = []
    for path in sorted((ROOT / package).rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for imported in _our_imports(path):
            if not _allowed(package, module, imported):
                offences.append(f"{module} imports {imported}")
    assert offences == []


@pytest.mark.parametrize("package", PACKAGES)
def test_top_level_names_resolve_here(package: str) -> None:
    """`models`, `channels` … are ours, not a same-named installed distribution."""
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(ROOT)
