"""Every command the README and docs/ show still runs: each script exists, and its parser accepts
the options the docs give it (they are parsed, then --help stops the script before it does work)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPT = re.compile(r"^(launch|data_prep)/[\w]+\.py$")
# placeholders the docs use for what the reader fills in
PLACEHOLDER = re.compile(r"[<>$]|^\.\.\.$")


def shell_lines(text: str) -> list[str]:
    """The lines of ```bash blocks and the inline code spans that look like commands."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += block.splitlines()
    lines += [span for span in re.findall(r"`([^`\n]+)`", text) if ".py" in span]
    return lines


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, arguments) for every line that runs a script of launch/ or data_prep/."""
    found = []
    for line in shell_lines(text):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in prose
            continue
        for i, token in enumerate(tokens):
            if SCRIPT.match(token):
                args = [a for a in tokens[i + 1:] if not PLACEHOLDER.search(a)]
                found.append((token, args))
                break
    return found


def test_the_extractor_finds_commands_in_blocks_and_spans():
    text = "run `python launch/rollout.py --run r` or\n```bash\ntorchrun --nproc_per_node 2 launch/train.py --config C  # two\n```\n"
    assert commands(text) == [("launch/train.py", ["--config", "C"]), ("launch/rollout.py", ["--run", "r"])]


def test_every_documented_command_parses():
    found = sorted({(script, tuple(args)) for page in PAGES for script, args in commands(page.read_text())})
    scripts = {script for script, _ in found}
    assert {"launch/train.py", "launch/rollout.py", "launch/bench_gpu.py", "data_prep/nbody.py"} <= scripts
    missing = [s for s in scripts if not (ROOT / s).is_file()]
    assert missing == []
    # one interpreter for all (torch is imported once): each script's main(args + ["--help"])
    program = """
import contextlib, importlib.util, io, json, sys
results = []
for script, args in json.loads(sys.argv[1]):
    spec = importlib.util.spec_from_file_location("doc_cmd", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            module.main([*args, "--help"])
        code = "returned without --help"
    except SystemExit as stop:
        code = stop.code or 0
    results.append([script, args, code, out.getvalue()[-300:] if code else ""])
print(json.dumps(results))
"""
    result = subprocess.run([sys.executable, "-c", program, json.dumps(found)], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    failures = [r for r in json.loads(result.stdout.strip().splitlines()[-1]) if r[2] != 0]
    assert failures == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())
    assert [t for t in targets if not (page.parent / t).exists()] == []


def test_every_documented_training_config_and_override_loads():
    """``--config`` files exist, and the dotted overrides the docs give them are keys of the config
    with values of the right type (the config loads; its data need not exist)."""
    from scaleq.config import load_config

    for page in PAGES:
        for script, args in commands(page.read_text()):
            if script != "launch/train.py":
                continue
            config = args[args.index("--config") + 1] if "--config" in args else None
            if config == "C":  # the docs' placeholder for any config
                continue
            assert config is None or (ROOT / config).is_file(), f"{page.name}: no config {config}"
            overrides = [a for a in args if "=" in a and not a.startswith("-")]
            load_config(ROOT / config if config else None, overrides)


@pytest.mark.slow
def test_every_script_runs_as_a_program():
    """`python launch/X.py --help` as a user types it: the script calls its main (in-process calls
    of main above would not notice a missing `if __name__ == "__main__"`)."""
    scripts = sorted([*ROOT.glob("launch/*.py"), *ROOT.glob("data_prep/*.py")])
    children = [(s, subprocess.Popen([sys.executable, str(s), "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)) for s in scripts]
    failed = []
    for script, child in children:
        out, err = child.communicate(timeout=300)
        if child.returncode != 0 or "usage:" not in out:
            failed.append(f"{script.relative_to(ROOT)}: exit {child.returncode}, {err.strip()[-300:] or out[:100]!r}")
    assert failed == []
