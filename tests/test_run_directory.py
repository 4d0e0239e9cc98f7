"""Every path of a run directory is spelled once, in scaleq/run_directory.py: no other module of
the package or entry point writes a run directory's file name as a literal (docstrings aside)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from scaleq.run_directory import BEST, CHECKPOINTS, NAMES, ROLLOUTS, TENSORBOARD, RunDirectory

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "scaleq" / "run_directory.py"
FOLDERS = (CHECKPOINTS, TENSORBOARD, ROLLOUTS)


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (of the module, a class or a function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def spelled_names(source: str) -> list[str]:
    """The run-directory names that string literals of ``source`` spell (f-string parts included)."""
    tree = ast.parse(source)
    skip = docstrings(tree)
    files = [re.escape(name) for name in NAMES if name not in FOLDERS]
    # a folder's name is also an English word ("the run's checkpoints"): only as a path, alone or beside a /
    folders = [rf"^{re.escape(name)}$|/{re.escape(name)}\b|\b{re.escape(name)}/" for name in FOLDERS]
    pattern = re.compile("|".join([r"(?<![\w.])(?:" + "|".join(files) + r")(?!\w)", *folders]))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            hits += [f"line {node.lineno}: {match[0].strip('/')!r} in {node.value!r}" for match in pattern.finditer(node.value)]
    return hits


def test_the_check_sees_a_name_in_code_and_not_in_a_docstring():
    source = ('"""Writes checkpoints/last.pt."""\ndef f(run):\n    """Reads config.yaml."""\n'
              '    print("the checkpoints were made with another config")\n'
              '    return run / "checkpoints" / f"{run}/metrics.csv" / f"{run}/tensorboard"\n')
    found = sorted(hit.split(": ")[1].split(" in ")[0] for hit in spelled_names(source))
    assert found == ["'checkpoints'", "'metrics.csv'", "'tensorboard'"]


def test_no_run_directory_name_outside_the_run_directory():
    files = [*sorted((ROOT / "scaleq").rglob("*.py")), *sorted((ROOT / "launch").glob("*.py"))]
    hits = [f"{path.relative_to(ROOT)} {hit}" for path in files if path != HOME for hit in spelled_names(path.read_text())]
    assert hits == []


def test_the_run_directory_names_every_path(tmp_path):
    run = RunDirectory(tmp_path)
    assert run.checkpoint("best") == run.best == run.checkpoint(BEST) == tmp_path / "checkpoints" / "best.pt"
    assert run.checkpoint("last") == run.last
    paths = [run.config, run.checkpoints, run.last, run.metrics, run.loss_curves, run.summary, run.tensorboard,
             run.rollouts, run.rollout("test"), run.clusters("test", 0)]
    assert len(set(paths)) == len(paths) and all(tmp_path in p.parents for p in paths)
