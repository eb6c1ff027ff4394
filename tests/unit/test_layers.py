"""Packages import one way: every import in service/, at any depth (in functions, under TYPE_CHECKING), goes
down or across the layers `service.LAYERS` declares, and no two parts of the service import each other."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from service import LAYERS

SERVICE = Path(__file__).resolve().parents[2] / "service"
LAYER_OF = {part: layer for layer, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str | None:
    """The part of the service a dotted module belongs to (`service.web.access` -> `web`); None outside it."""
    names = module.split(".")
    if names[0] != "service":
        return None
    return names[1] if len(names) > 1 else "service"


def imports(path: Path) -> list[tuple[str, int]]:
    """Every service module `path` imports, with its line, wherever the import stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            if node.module == "service":  # `from service import errors` names a part, not a value
                found += [(f"service.{alias.name}", node.lineno) for alias in node.names]
    return [(module, line) for module, line in found if part_of(module) is not None]


MODULES = sorted(SERVICE.rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SERVICE.parent).with_suffix("").parts).removesuffix(".__init__")


def test_every_part_of_the_service_has_a_layer():
    parts = {part_of(module_name(path)) for path in MODULES}
    assert parts - set(LAYER_OF) == set(), "add the new part to service.LAYERS, where it belongs"
    assert set(LAYER_OF) - parts - {"service"} == set(), "a layer names a part that is gone"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(SERVICE)))
def test_each_import_goes_down_or_across_the_layers(path):
    part = part_of(module_name(path))
    upward = [
        f"line {line}: imports {module} ({part_of(module)}, layer {LAYER_OF[part_of(module)]})"
        for module, line in imports(path)
        if part_of(module) in LAYER_OF and LAYER_OF[part_of(module)] > LAYER_OF[part]
    ]
    assert not upward, (
        f"{path.relative_to(SERVICE.parent)} ({part}, layer {LAYER_OF[part]}) imports from a higher layer: "
        + "; ".join(upward)
        + ". Pass what it needs in as an argument, a callback or a Protocol."
    )


def test_no_two_parts_import_each_other():
    imported_by: dict[str, set[str]] = defaultdict(set)
    for path in MODULES:
        part = part_of(module_name(path))
        for module, _ in imports(path):
            if part_of(module) != part:
                imported_by[part_of(module)].add(part)
    both_ways = sorted(
        {tuple(sorted((a, b))) for a, users in imported_by.items() for b in users if a in imported_by.get(b, ())}
    )
    assert both_ways == [], f"parts that import each other (a third thing is missing): {both_ways}"


def test_the_architecture_document_shows_the_order_declared():
    document = (SERVICE.parent / "docs" / "architecture.md").read_text()
    order = " < ".join(" ".join(parts) for parts in LAYERS)
    assert order in document, f"docs/architecture.md should show the layers as declared: {order}"
