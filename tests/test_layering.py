"""The package's import rules (docs/architecture.md, "Dependency lines"), read from the source with
``ast`` so that no import cycle between the loop, the engines and the launchers can come back unnoticed.

The floors, bottom up: config (a leaf) and io; nn and graph; models; store, sources and data;
losses; distributed (engines, graph parallelism); train (the loop); rollout and bench (need data
and models, never the loop); scaleq.run (one run: the loop plus what the config hands it);
experiments (train from scratch), eval (tools that load finished runs) and launchers (the command
line, how copies of a run start). ``scaleq.testing`` holds the user-facing equivariance check; the
tests' fixtures live in tests/support/, outside the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scaleq"

# who may import the distributed runtimes (docs/architecture.md: the engines and the launchers)
RUNTIMES = ("torch.distributed", "torch.nn.parallel", "deepspeed", "ray")
RUNTIME_FOLDERS = ("distributed", "launchers")


def import_statements(source: str, module: str) -> list[tuple[str, list[str]]]:
    """(module, names) per import in ``source`` (the text of ``module``), at any depth (function
    bodies and TYPE_CHECKING blocks too), relative imports resolved: ``import a.b`` gives ("a.b", []),
    ``from a import b, c`` gives ("a", ["b", "c"])."""
    package = module.rsplit(".", 1)[0]
    statements: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            statements.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            statements.append((base, [alias.name for alias in node.names]))
    return statements


def imported_modules(source: str, module: str) -> set[str]:
    """Every module that ``source`` (the text of ``module``, e.g. "scaleq.distributed.engine")
    imports, at any depth (function bodies and TYPE_CHECKING blocks too), relative imports resolved.
    ``from a import b`` yields both "a" and "a.b": b may be a submodule."""
    found: set[str] = set()
    for base, names in import_statements(source, module):
        found.add(base)
        found.update(f"{base}.{name}" for name in names)
    return found


def module_name(path: Path) -> str:
    """"scaleq.graph.builder" for scaleq/graph/builder.py; "scaleq.data.__init__" for a package's own file
    (so that its relative imports resolve against the package itself)."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    module = ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)
    return module + ".__init__" if relative.name == "__init__" else module


def package_files(folder: str = "") -> list[Path]:
    """The .py files under ``scaleq/<folder>`` (the whole package for ""); a module file such as
    ``run`` stands for scaleq/run.py."""
    single = PACKAGE / f"{folder}.py"
    if folder and single.is_file():
        return [single]
    return sorted((PACKAGE / folder).rglob("*.py"))


def forbidden_imports(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    """"path: module" for every import under ``scaleq/<folder>`` of a module in ``forbidden`` (or below)."""
    hits = []
    for path in package_files(folder):
        for name in sorted(imported_modules(path.read_text(), module_name(path))):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                hits.append(f"{path.relative_to(PACKAGE.parent)}: {name}")
    return hits


def import_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """module -> the modules of ``files`` (module -> source) it imports, at any depth. A package is
    its ``__init__``; ``from package import name`` points at the submodule ``name`` when there is
    one (the package's own code is then not what this file needs), else at the package."""
    modules = {m.removesuffix(".__init__"): m for m in files}
    graph: dict[str, set[str]] = {}
    for module, source in files.items():
        targets: set[str] = set()
        for base, names in import_statements(source, module):
            for name in names or [""]:
                target = f"{base}.{name}" if f"{base}.{name}" in modules else base
                if target in modules:
                    targets.add(modules[target])
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


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


def test_the_cycle_finder_finds_a_lazy_cycle_and_no_false_one():
    files = {
        "scaleq.a": "from scaleq.b import f",
        "scaleq.b": "def f():\n    from scaleq.a import g",  # lazy, inside a function: still a cycle
        "scaleq.p.__init__": "from scaleq.p.x import X",  # a package re-exporting its submodule ...
        "scaleq.p.x": "from scaleq.p.y import Y",  # ... whose submodules import each other, not the package
        "scaleq.p.y": "import math",
    }
    assert find_cycle(import_graph(files)) == ["scaleq.a", "scaleq.b", "scaleq.a"]
    del files["scaleq.b"]
    assert find_cycle(import_graph(files)) is None


@pytest.mark.parametrize("folder, forbidden", [
    ("distributed", ("scaleq.train", "scaleq.launchers")),  # engines sit below the loop and its launchers
    ("train", ("scaleq.launchers", "ray", "deepspeed")),  # the loop knows nothing of who starts it, or how
    # the loop is handed its callbacks: it imports no evaluation, rollout, benchmark or run
    ("train", ("scaleq.eval", "scaleq.rollout", "scaleq.bench", "scaleq.run")),
    # a rollout needs data and models only; the loop hands it nothing but arguments
    ("rollout", ("scaleq.train", "scaleq.eval", "scaleq.bench", "scaleq.run", "scaleq.launchers")),
    ("bench", ("scaleq.train", "scaleq.eval", "scaleq.rollout", "scaleq.run", "scaleq.launchers")),
    ("distributed", ("scaleq.run", "scaleq.eval", "scaleq.rollout", "scaleq.bench")),
    ("data", ("scaleq.models", "scaleq.losses", "scaleq.train", "scaleq.distributed", "scaleq.run",
              "scaleq.eval", "scaleq.rollout", "scaleq.bench", "scaleq.launchers", "scaleq.experiments")),
    # graph construction sits below the engine, the benchmarks and rollouts that build graphs: it
    # knows no store, source, sample, model, loss, engine or loop
    ("graph", ("scaleq.store", "scaleq.sources", "scaleq.data", "scaleq.models", "scaleq.losses",
               "scaleq.distributed", "scaleq.train", "scaleq.run", "scaleq.eval", "scaleq.experiments",
               "scaleq.rollout", "scaleq.bench", "scaleq.launchers", *RUNTIMES)),
    # the store is the format alone: it never imports the sources that write into it, nor what reads samples
    ("store", ("scaleq.sources", "scaleq.data", "scaleq.graph", "scaleq.models", "scaleq.losses", "scaleq.nn",
               "scaleq.distributed", "scaleq.train", "scaleq.run", "scaleq.eval", "scaleq.experiments",
               "scaleq.rollout", "scaleq.bench", "scaleq.launchers", "torch", *RUNTIMES)),
    # the sources write stores; they read no samples and build no graphs
    ("sources", ("scaleq.data", "scaleq.graph", "scaleq.models", "scaleq.losses", "scaleq.distributed",
                 "scaleq.train", "scaleq.run", "scaleq.eval", "scaleq.experiments", "scaleq.rollout",
                 "scaleq.bench", "scaleq.launchers", *RUNTIMES)),
    # tools that load finished runs train nothing from scratch
    ("eval", ("scaleq.experiments", "scaleq.launchers")),
    ("train", ("scaleq.experiments",)),
    # models are single-device code: no runtimes, no stores, no loop
    ("models", ("scaleq.data", "scaleq.losses", "scaleq.distributed", "scaleq.train", "scaleq.run", "scaleq.eval",
                "scaleq.rollout", "scaleq.bench", "scaleq.launchers", "zarr", *RUNTIMES)),
    ("nn", ("scaleq.models", "scaleq.data", "scaleq.losses", "scaleq.distributed", "scaleq.train", "scaleq.run",
            "scaleq.eval", "scaleq.rollout", "scaleq.bench", "scaleq.launchers", "zarr", *RUNTIMES)),
])
def test_lower_layers_do_not_import_upper_ones(folder, forbidden):
    assert (PACKAGE / folder).is_dir()
    assert forbidden_imports(folder, forbidden) == []


def test_config_is_a_leaf():
    """Schema and validation only: of scaleq it imports the torch-free rule modules and io, nothing
    of torch, models, neighbour search or other I/O libraries."""
    hits = [hit for hit in forbidden_imports("config", ("scaleq", "torch", "torch_geometric", "torch_cluster", "zarr"))
            if hit.split(": ")[1] not in ("scaleq.graph.options", "scaleq.sample_options", "scaleq.io")
            and not hit.split(": ")[1].startswith(("scaleq.graph.options.", "scaleq.sample_options.", "scaleq.io."))]
    assert hits == []


def test_only_the_tests_import_the_testing_helpers():
    hits = [hit for folder in sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "testing"
                                     and p.name != "__pycache__")
            for hit in forbidden_imports(folder, ("scaleq.testing",))]
    hits += [hit for path in PACKAGE.glob("*.py") for hit in forbidden_imports(path.stem, ("scaleq.testing",))]
    assert hits == []


def test_only_the_engines_and_launchers_import_the_distributed_runtimes():
    folders = [p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name not in (*RUNTIME_FOLDERS, "__pycache__")]
    hits = [hit for folder in sorted(folders) for hit in forbidden_imports(folder, RUNTIMES)]
    hits += [hit for path in PACKAGE.glob("*.py") for hit in forbidden_imports(path.stem, RUNTIMES)]
    assert hits == []


def test_no_import_cycle_between_files():
    files = {module_name(path): path.read_text() for path in package_files()}
    assert find_cycle(import_graph(files)) is None


def test_the_installed_package_holds_no_test_fixtures():
    """Only the user-facing equivariance check ships in scaleq.testing; the fixtures the tests share
    (tiny stores, multi-rank helpers) live in tests/support/."""
    assert sorted(p.name for p in (PACKAGE / "testing").glob("*.py")) == ["__init__.py", "equivariance.py"]
    assert (PACKAGE.parent / "tests" / "support").is_dir()
