"""The optional parts (DeepSpeed, Ray, MDAnalysis) are extras; using one that is missing stops with
one line naming the extra, and the set-up command and CI install and lint everything."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scaleq.distributed import make_engine
from scaleq.extras import EXTRAS, MissingExtra, require
from scaleq.launchers.failures import exit_code, one_line

ROOT = Path(__file__).resolve().parents[1]


def test_a_missing_part_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what Python does for a package that is not there
    with pytest.raises(MissingExtra, match=r"engine\.kind: deepspeed needs deepspeed.*pip install 'scaleq\[deepspeed\]'"):
        make_engine("deepspeed")
    monkeypatch.setitem(sys.modules, "MDAnalysis", None)
    with pytest.raises(MissingExtra) as err:
        require("md", "converting molecular dynamics")
    assert exit_code(err.value) == 2 and "\n" not in one_line(err.value) and "scaleq[md]" in one_line(err.value)


def test_an_installed_part_passes():
    require("md", "converting molecular dynamics")  # the test set-up installs every extra


def test_the_optional_parts_are_extras_and_make_installs_them_all():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = " ".join(project["dependencies"]).lower()
    extras = project["optional-dependencies"]
    for extra, module in EXTRAS.items():
        assert module.lower() not in required, f"{module} is a hard dependency"
        assert any(req.lower().startswith(module.lower()) for req in extras[extra]), extra
    assert extras["all"] == [f"scaleq[{','.join(EXTRAS)}]"]
    assert "-e '.[test,all]'" in (ROOT / "Makefile").read_text()


def test_ci_runs_the_linter_before_the_tests():
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert steps == ["make lint", "make test"]
