"""The floors of docs/architecture.md ("Dependency direction"), checked on the code's import graph.

Every ``import magiceraser...`` / ``from magiceraser... import`` in the package, at the top of a
module or inside a function (the heavy ones are lazy), is an edge between two units: a package
(``datasets``, ``serve``, ...) or the root (the modules at the package root plus the shared
``config`` and ``storage`` packages). An edge must go to the same unit, down a floor, or to a unit
the table allows; anything else fails with the file and line.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "magiceraser"

# Shared packages that belong to the root floor (the foundation every job stands on).
ROOT_PACKAGES = {"config", "storage"}

# What each unit may import besides itself (docs/architecture.md, "Dependency direction").
ALLOWED: dict[str, set[str]] = {
    "root": set(),
    "tiny_models": {"root"},
    "models": {"root"},
    "datasets": {"root", "models"},
    "training": {"root", "models"},
    "pipelines": {"root", "models"},
    "evaluation": {"root", "models", "datasets", "pipelines"},
    "serve": {"root", "models", "pipelines"},
}


def unit_of(module: str, package: Path = PACKAGE) -> str:
    """``magiceraser.serve.app`` -> ``serve``; a root module or a shared package -> ``root``."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ROOT_PACKAGES or not (package / parts[1]).is_dir():
        return "root"
    return parts[1]


def imports_against_the_floors(package: Path = PACKAGE) -> list[str]:
    """``file:line: unit imports other`` for every edge the table does not allow."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        here = unit_of(".".join(rel.parts), package)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "magiceraser"]
            else:
                continue
            for target in targets:
                if not target.startswith("magiceraser.") or target == "magiceraser":
                    continue
                there = unit_of(target, package)
                if there != here and there not in ALLOWED[here]:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno}: {here} imports {there} ({target})")
    return sorted(set(found))


def test_every_import_respects_the_floors():
    assert imports_against_the_floors() == []


def test_every_package_has_a_floor():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages - ROOT_PACKAGES <= set(ALLOWED), packages - ROOT_PACKAGES - set(ALLOWED)


def test_an_import_against_the_floors_is_found_with_its_file_and_line(tmp_path):
    copy = tmp_path / "magiceraser"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    target = copy / "datasets" / "compose.py"
    lines = target.read_text().splitlines()
    lines.insert(len(lines), "import magiceraser.serve")
    target.write_text("\n".join(lines) + "\n")
    (copy / "models" / "captioner.py").write_text(
        (copy / "models" / "captioner.py").read_text() + "\n\ndef f():\n    from magiceraser.training import loop\n")
    found = imports_against_the_floors(copy)
    assert found == [f"magiceraser/datasets/compose.py:{len(lines)}: datasets imports serve (magiceraser.serve)",
                     f"magiceraser/models/captioner.py:{len((copy / 'models' / 'captioner.py').read_text().splitlines())}: "
                     "models imports training (magiceraser.training)"], found
