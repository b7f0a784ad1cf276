"""The layering has no import circles: no module imports, directly or through others, a module that
imports it back (imports inside functions count too). The layer contracts themselves are
import-linter's (``[tool.importlinter]`` in pyproject.toml; ``lint-imports`` runs in .ci/run), and
the engine names no strategy: a grep for each registered name finds it only in the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="import-linter (the dev extra) brings grimp")

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_is_part_of_an_import_circle():
    graph = grimp.build_graph("engine", "strategies", "models", "research")
    circles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                circles.append(" -> ".join((importer, *back)))
    assert circles == []


def test_the_engine_names_no_strategy():
    from strategies import STRATEGIES

    pattern = re.compile(r"\b(" + "|".join(map(re.escape, STRATEGIES)) + r")\b")
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sorted((ROOT / "engine").rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []
