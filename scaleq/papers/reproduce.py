"""Reproduce one of the papers' tables (:mod:`scaleq.papers.tables`): make its data, train every
row and seed through ``launch/train.py`` (one run directory each), and write the table.

Layout: ``<runs>/<table>/<profile>[-b<budget>]/<row>-s<seed>/`` is an ordinary run directory
(config.yaml, checkpoints/, metrics.csv, summary.json) plus ``reproduce.json`` (this module's
record: status, wall time of each attempt, the exact command). A run with a summary.json, or one
that diverged (the training command's NaN failure: a result the tables report as NaN), is not run
again; any other run is resumed from its last checkpoint (``launch/train.py --resume-or-start`` starts afresh
when there is none), so a killed table continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scaleq.io import atomic_write_text
from scaleq.papers.datasets import dataset_dir, ensure_dataset
from scaleq.papers.tables import Row, Table
from scaleq.run_directory import RunDirectory

RECORD = "reproduce.json"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Plan:
    """What one invocation runs: a table at a profile, with the epochs scaled by ``budget``."""

    table: Table
    profile: str
    seeds: tuple[int, ...]
    budget: float
    runs_root: Path
    data_root: Path
    only: tuple[str, ...] = ()  # train and report only these rows (empty: all of the profile's)

    @property
    def tag(self) -> str:
        return self.profile if self.budget == 1.0 else f"{self.profile}-b{self.budget:g}"

    @property
    def out_dir(self) -> Path:
        return self.runs_root / self.table.name / self.tag

    def rows(self) -> list[Row]:
        keys = self.table.profiles[self.profile].rows
        rows = [r for r in self.table.rows if keys is None or r.key in keys]
        if self.only:  # these rows, and the rows whose runs they read
            rows = [r for r in rows if r.key in self.only or r.linear_of in self.only]
        return rows

    def trained_rows(self) -> list[Row]:
        return [r for r in self.rows() if r.linear_of is None]

    def run_dir(self, row: Row, seed: int) -> Path:
        return self.out_dir / f"{row.key}-s{seed}"


def scaled_epochs(epochs: int, budget: float) -> int:
    return max(1, round(epochs * budget))


def train_command(plan: Plan, row: Row, seed: int, python: str = sys.executable) -> list[str]:
    """The ``launch/train.py`` command that trains (or resumes) ``row`` at ``seed``."""
    from scaleq.config import load_config

    assert row.config is not None
    profile = plan.table.profiles[plan.profile]
    overrides = [*profile.overrides, *row.overrides]
    base = load_config(REPO / row.config, overrides)
    epochs = scaled_epochs(base.train.epochs, plan.budget)
    patience = min(base.train.patience, max(base.train.eval_every, scaled_epochs(base.train.patience, plan.budget)))
    data_path = dataset_dir(plan.data_root, plan.table, plan.profile, row.dataset)
    return [python, str(REPO / "launch" / "train.py"), "--config", str(REPO / row.config), "--resume-or-start",
            *overrides, f"name={row.key}-s{seed}", f"out_dir={plan.out_dir}", f"seed={seed}",
            f"data.path={data_path}", f"train.epochs={epochs}", f"train.patience={patience}", "train.progress=false"]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_state(run_dir: Path) -> str:
    """'done' (summary written), 'diverged' (NaN: final), or 'todo' (never run, killed, or failed otherwise)."""
    if RunDirectory(run_dir).summary.is_file():
        return "done"
    record = read_json(run_dir / RECORD) or {}
    return "diverged" if record.get("status") == "diverged" else "todo"


def _record(run_dir: Path, **update: Any) -> None:
    record = read_json(run_dir / RECORD) or {"attempts": []}
    attempts = update.pop("attempt", None)
    if attempts is not None:
        record["attempts"].append(attempts)
    record.update(update)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2))


def train_row(plan: Plan, row: Row, seed: int, log: Path) -> str:
    """Train (or resume) one run in a child process; its output goes to ``log``. The state after."""
    run_dir = plan.run_dir(row, seed)
    command = train_command(plan, row, seed)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, check=False)
    wall = time.perf_counter() - start
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    attempt = {"wall_s": round(wall, 1), "returncode": proc.returncode, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if proc.returncode == 0:
        _record(run_dir, attempt=attempt, status="done", command=shlex.join(command))
        return "done"
    diverged = proc.returncode == 1 and ("nan" in tail[0].lower() or "non-finite" in tail[0].lower())
    _record(run_dir, attempt=attempt, status="diverged" if diverged else "failed", message=tail[0],
            command=shlex.join(command))
    return "diverged" if diverged else "failed"


def reproduce(plan: Plan, *, progress: bool = True, print_fn: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Make the data, train every row and seed not yet finished, and return the table's results."""
    profile = plan.table.profiles[plan.profile]
    print_fn(f"{plan.table.name} ({plan.table.source}), profile '{plan.profile}': {profile.note}")
    if plan.budget != 1.0:
        print_fn(f"budget {plan.budget:g}: every row's epochs (and patience) scaled by {plan.budget:g}; "
                 "the table says so")
    # seed by seed: a table killed half-way has every row at its first seeds
    jobs = [(row, seed) for seed in plan.seeds for row in plan.trained_rows()]
    bar = tqdm(total=len(jobs), disable=not progress, desc=plan.table.name, unit="run", file=sys.stderr)
    for row, seed in jobs:
        run_dir = plan.run_dir(row, seed)
        state = run_state(run_dir)
        if state == "todo":
            # each dataset when its first row needs it: the first rows train while later data wait
            ensure_dataset(plan.data_root, plan.table, plan.profile, row.dataset, print_fn=print_fn)
            bar.set_postfix_str(f"{row.key} seed {seed}")
            state = train_row(plan, row, seed, plan.out_dir / "logs" / f"{row.key}-s{seed}.log")
            if state == "failed":
                record = read_json(run_dir / RECORD) or {}
                print_fn(f"{row.key} seed {seed}: failed ({record.get('message', '')}); "
                         f"log: {plan.out_dir / 'logs' / f'{row.key}-s{seed}.log'}")
        bar.update(1)
    bar.close()
    return collect(plan)


def collect(plan: Plan) -> list[dict[str, Any]]:
    """One dict per row: the paper's figure and ours over the seeds that finished, in the table's unit."""
    scale = plan.table.scale
    results = []
    for row in plan.rows():
        source = plan.table.row(row.linear_of) if row.linear_of else row
        values, epochs, walls, states = [], [], [], []
        for seed in plan.seeds:
            run_dir = plan.run_dir(source, seed)
            state = run_state(run_dir)
            states.append(state)
            record = read_json(run_dir / RECORD) or {}
            summary = read_json(RunDirectory(run_dir).summary)
            if state == "done" and summary is not None:
                values.append(summary["linear_test_mse" if row.linear_of else "test_mse"] / scale)
                epochs.append(summary["epochs_run"])
            elif state == "diverged":
                values.append(math.nan)
            else:
                continue
            # exit status 2: refused before training (e.g. the run was busy in another process)
            walls.append(sum(a["wall_s"] for a in record.get("attempts", []) if a.get("returncode") != 2))
        results.append({
            "row": row, "values": values, "epochs": epochs, "wall_s": walls if not row.linear_of else [],
            "states": states,
        })
    return results


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard deviation (None for one value); NaN when any run diverged."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def machine() -> str:
    """The CPU model and the threads torch used (or the GPU)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.environ.get('OMP_NUM_THREADS', os.cpu_count())} thread(s)"


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "NaN"
    digits = 4 if abs(value) < 10 else 2
    text = f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits - 1}f}" if abs(value) < 10 else f"{value:.2f}"
    return text if std is None else f"{text} +- {std:.2g}"


def markdown(plan: Plan, results: list[dict[str, Any]], command: str) -> str:
    """The table's section of docs/results.md."""
    table, profile = plan.table, plan.table.profiles[plan.profile]
    relative_of = table.extra.get("relative_time_of")
    ref_time = None
    if relative_of:
        ref = next((r for r in results if r["row"].key == relative_of), None)
        if ref and ref["wall_s"] and ref["epochs"]:
            ref_time = statistics.fmean(ref["wall_s"]) / statistics.fmean(ref["epochs"])
    has_groups = any(r["row"].group for r in results)
    head = (["group"] if has_groups else []) + ["model", f"paper ({table.unit})", f"ours ({table.unit}), mean +- std",
                                                "seeds", "epochs run", "wall time / run"]
    if ref_time:
        head += ["time/epoch vs EGNN (ours)", "paper's relative time"]
    lines = [f"### {table.title}", "",
             f"Source: {table.source}. Profile '{plan.profile}': {profile.note}."
             + (f" **Budget {plan.budget:g}: epochs (and patience) scaled by {plan.budget:g}.**" if plan.budget != 1.0 else ""),
             f"Machine: {machine()}.", "", f"    {command}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        row = res["row"]
        ours_mean, ours_std = mean_std(res["values"])
        finished = f"{len(res['values'])}/{len(plan.seeds)}"
        if "diverged" in res["states"]:
            finished += f" ({res['states'].count('diverged')} NaN)"
        cells = ([row.group] if has_groups else []) + [
            row.label, _fmt(row.paper, row.paper_std), _fmt(ours_mean, ours_std) if res["values"] else "not run",
            finished, ", ".join(str(e) for e in res["epochs"]) or "-",
            f"{statistics.fmean(res['wall_s']):.0f} s" if res["wall_s"] and any(res["wall_s"]) else "-"]
        if ref_time:
            own = (statistics.fmean(res["wall_s"]) / statistics.fmean(res["epochs"])
                   if res["wall_s"] and res["epochs"] else None)
            paper_rel = table.extra.get("paper_relative_time", {}).get(row.key)
            cells += [f"{own / ref_time:.2f}" if own else "-", f"{paper_rel:.2f}" if paper_rel is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_section(results_md: Path, key: str, body: str) -> None:
    """Replace (or append) the section between this key's markers in ``results_md``, atomically."""
    begin, end = f"<!-- reproduce:{key} begin -->", f"<!-- reproduce:{key} end -->"
    text = results_md.read_text() if results_md.exists() else "# Reproduced results\n"
    block = f"{begin}\n{body}{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(results_md, text)


def plot_trend(plan: Plan, results: list[dict[str, Any]], png: Path) -> None:
    """MSE against the row groups (e.g. depth), one line per model through the seeds' means, a dot
    per finite seed; a row with a diverged seed (NaN) is a cross at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    labels = sorted({r["row"].label for r in results})
    finite = [v for r in results for v in r["values"] if not math.isnan(v)]
    top = max(finite + [r["row"].paper for r in results if r["row"].paper and not math.isnan(r["row"].paper)] or [1])
    for i, label in enumerate(labels):
        rows = [r for r in results if r["row"].label == label]
        xs = [float(r["row"].group) for r in rows]
        for kind, pick, style in (("ours", lambda r: mean_std(r["values"])[0], "-o"),
                                  ("paper", lambda r: r["row"].paper, "--s")):
            ys = [pick(r) for r in rows]
            ax.plot(xs, [y if y is not None else math.nan for y in ys], style, color=f"C{i}", label=f"{label} ({kind})",
                    alpha=1.0 if kind == "ours" else 0.5)
            nan_x = [x for x, y, r in zip(xs, ys, rows) if y is not None and math.isnan(y) and
                     (kind == "paper" or r["values"])]
            ax.plot(nan_x, [top * 1.1] * len(nan_x), "x", color=f"C{i}", markersize=9)
        # Each finite seed as a dot: a mean that one diverged seed makes NaN hides the others.
        seed_x = [x for x, r in zip(xs, rows) for v in r["values"] if not math.isnan(v)]
        seed_y = [v for r in rows for v in r["values"] if not math.isnan(v)]
        ax.plot(seed_x, seed_y, ".", color=f"C{i}", alpha=0.5, markersize=5)
    ax.set_xlabel(plan.table.extra.get("group_name", "group"))
    ax.set_ylabel(plan.table.unit)
    ax.set_title(f"{plan.table.name} ({plan.tag}); dots: seeds, x: a seed NaN")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


__all__ = ["Plan", "reproduce", "collect", "markdown", "write_section", "plot_trend", "train_command", "run_state"]
