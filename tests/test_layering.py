"""The package's import rules (DESIGN.md, "Dependency rules"), read from the source with ``ast`` so
that no import cycle between the loop, the engines and the launchers can come back unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scaleq"


def imported_modules(source: str, module: str) -> set[str]:
    """Every module that ``source`` (the text of ``module``, e.g. "scaleq.distributed.engine")
    imports, at any depth (function bodies and TYPE_CHECKING blocks too), relative imports resolved.
    ``from a import b`` yields both "a" and "a.b": b may be a submodule."""
    package = module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def forbidden_imports(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    """"path: module" for every import under ``scaleq/<folder>`` of a module in ``forbidden`` (or below)."""
    hits = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
        if relative.name == "__init__":
            module += ".__init__"  # so that relative imports resolve against the package itself
        for name in sorted(imported_modules(path.read_text(), module)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                hits.append(f"{path.relative_to(PACKAGE.parent)}: {name}")
    return hits


def test_the_checker_sees_every_form_of_import():
    source = "\n".join([
        "import scaleq.train.run",
        "from scaleq import launchers",
        "def f():",
        "    from ..train.trainer import Trainer",
        "if TYPE_CHECKING:",
        "    from . import halo",
    ])
    found = imported_modules(source, "scaleq.distributed.engine")
    assert {"scaleq.train.run", "scaleq.launchers", "scaleq.train.trainer", "scaleq.distributed.halo"} <= found


def test_the_checker_finds_an_import_it_must_forbid():
    # the launcher imports the loop: the same walk over its folder must report it
    assert any("scaleq.run" in hit for hit in forbidden_imports("launchers", ("scaleq.run",)))


@pytest.mark.parametrize("folder, forbidden", [
    ("distributed", ("scaleq.train", "scaleq.launchers")),  # engines sit below the loop and its launchers
    ("train", ("scaleq.launchers", "ray", "deepspeed")),  # the loop knows nothing of who starts it, or how
])
def test_lower_layers_do_not_import_upper_ones(folder, forbidden):
    assert (PACKAGE / folder).is_dir()
    assert forbidden_imports(folder, forbidden) == []
