"""The package's layers only look down: core, then split and the observers, then the
hooked model, then the features that use it (adapter, check, remote, commands, CLI).

Read from the source (every import, also those inside functions), so a reach upwards
fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "auto_hookpoint"

# For each layer: the package-internal modules it may import (prefix match).
ALLOWED: dict[str, tuple[str, ...]] = {
    "errors": (),
    "core": ("core", "errors"),
    "split": ("core", "errors", "split"),
    "observers": ("core", "errors", "observers"),
    "scoped_hooks": ("core", "errors"),
    "site_report": ("core", "errors"),
    "name_clashes": ("errors",),
    "hooked": ("core", "errors", "split", "scoped_hooks", "name_clashes"),
    # split inference across machines: a feature on top of the hooked model
    "remote": ("core", "errors", "split", "observers", "hooked", "remote"),
    # HookedTransformerAdapter: TransformerLens' surface on the hooked HF model
    "adapter": ("core", "errors", "split", "hooked", "scoped_hooks", "adapter", "demo"),
}


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0]


def _internal_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("auto_hookpoint."):
                found.add(name.split(".")[1])
    return found


SOURCES = [p for p in sorted(PACKAGE.rglob("*.py")) if _layer(p) in ALLOWED]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_only_import_what_is_below_them(path: Path) -> None:
    allowed = ALLOWED[_layer(path)]
    above = {name for name in _internal_imports(path) if name not in allowed}
    assert not above, f"{path.relative_to(PACKAGE)} reaches up into {sorted(above)}"


def test_the_layering_test_sees_a_reach_upwards(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from auto_hookpoint.hooked import auto_hook\n")
    assert _internal_imports(probe) == {"hooked"}
