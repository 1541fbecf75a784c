"""The packages' import rules (docs/architecture.md), checked on the source: a module may import
only what its package's row allows, so the layers stay as the page draws them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "shop"

# Shared by every package: they import nothing of the shop but each other.
SHARED = {
    "settings",
    "errors",
    "events",
    "fields",
    "ids",
    "jsonutil",
    "clock",
    "supervision",
    "tracing",
    "otlp_json",
}
# What each package may import besides itself and the shared modules. `runtime` (the
# composition roots) may import everything, and nothing imports it.
ALLOWED: dict[str, set[str]] = {
    "access": set(),
    "messaging": set(),
    "storage": {"messaging"},
    "web": {"storage"},
    "products": {"access", "storage", "web"},
    "orders": {"access", "storage", "web", "messaging", "products"},
}


def _unit(module: str) -> str:
    """`shop.orders.service` -> `orders`; `shop.errors` -> `errors`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "shop"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "shop":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("shop."):
                found.add(_unit(node.module))
        elif isinstance(node, ast.Import):
            found |= {_unit(a.name) for a in node.names if a.name.startswith("shop.")}
    return found


MODULES = sorted(SRC.rglob("*.py"))
RULED = [
    p
    for p in MODULES
    if p.relative_to(SRC).parts[0] not in ("runtime", "__main__.py", "__init__.py")
]


@pytest.mark.parametrize("path", RULED, ids=lambda p: str(p.relative_to(SRC)))
def test_a_module_imports_only_what_its_package_may(path: Path) -> None:
    unit = path.relative_to(SRC).parts[0].removesuffix(".py")
    allowed = (SHARED if unit in SHARED else SHARED | ALLOWED[unit]) | {unit}
    assert _imports(path) <= allowed, f"{unit} may not import {_imports(path) - allowed}"


def test_every_package_has_a_rule() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED) | {"runtime"}


def test_every_module_says_what_it_is_for() -> None:
    silent = [
        str(path.relative_to(SRC))
        for path in MODULES
        if path.name not in ("__init__.py", "__main__.py")
        and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert not silent
