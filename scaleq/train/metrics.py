"""Run outputs on rank 0: metrics as CSV and TensorBoard scalars, and a loss-curve plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import TracebackType

from torch.utils.tensorboard import SummaryWriter

from scaleq.io import atomic_write, save_figure
from scaleq.run_directory import RunDirectory


class MetricsLogger:
    """Appends one CSV row per record, with the columns fixed up front (values a record lacks,
    such as the validation MSE between evaluations, stay empty), and mirrors every value to
    TensorBoard under ``<run_dir>/tensorboard`` (the paths come from :class:`scaleq.run_directory.RunDirectory`).

    ``through_epoch``: when resuming, the rows of epochs up to this one are kept and later ones
    (logged after the checkpoint that is resumed, so about to be redone) are dropped, in the CSV
    and in TensorBoard; the CSV is rewritten with the current columns.
    """

    def __init__(self, run_dir: RunDirectory, columns: list[str], through_epoch: int | None = None) -> None:
        self.csv_path = run_dir.metrics
        self.columns = ["step", *columns]
        kept: list[dict[str, str]] = []
        if self.csv_path.exists() and through_epoch is not None:
            kept = [r for r in read_metrics(self.csv_path) if r.get("epoch") and int(r["epoch"]) <= through_epoch]
        if not self.csv_path.exists() or through_epoch is not None:
            with atomic_write(self.csv_path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.columns)
                writer.writerows([[r.get(c) or "" for c in self.columns] for r in kept])
        purge_step = max((int(r["step"]) for r in kept), default=-1) + 1 if through_epoch is not None else None
        self.tensorboard = SummaryWriter(str(run_dir.tensorboard), purge_step=purge_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        unknown = set(values) - set(self.columns)
        assert not unknown, f"metrics {sorted(unknown)} are not among the CSV columns {self.columns}"
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow([step if c == "step" else values.get(c, "") for c in self.columns])
        for key, value in values.items():
            if isinstance(value, float | int) and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self.tensorboard.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_metrics(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv; values a record lacked are empty strings."""
    with csv_path.open() as f:
        return list(csv.DictReader(f))


def plot_loss_curves(csv_path: Path, png_path: Path) -> None:
    """Training loss and validation MSE against epoch, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = read_metrics(csv_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    # the MSE part of the training loss, not the total: a total with FastEGNN's MMD term in it can
    # be negative (losses.py), which a log axis cannot show, and only the MSE compares with validation
    for key, label in (("train_mse", "train MSE"), ("val_mse", "validation MSE")):
        points = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if points:
            ax.plot(*zip(*points), label=label, marker="." if key == "val_mse" else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 2.5 on the axis
    ax.set_ylabel("position MSE (log scale)")
    ax.set_yscale("log")
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, png_path)
