"""Run outputs on rank 0: metrics as CSV and TensorBoard scalars, and a loss-curve plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import TracebackType

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    """Appends one CSV row per record, with the columns fixed up front (values a record lacks,
    such as the validation MSE between evaluations, stay empty), and mirrors every value to
    TensorBoard under ``<run_dir>/tensorboard``."""

    def __init__(self, run_dir: Path, columns: list[str]) -> None:
        self.csv_path = run_dir / "metrics.csv"
        self.columns = ["step", *columns]
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        if not self.csv_path.exists():  # resuming keeps the rows written before
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(self.columns)

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

    rows = read_metrics(csv_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "train loss"), ("val_mse", "validation MSE")):
        points = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        if points:
            ax.plot(*zip(*points), label=label, marker="." if key == "val_mse" else None)
    ax.set_xlabel("epoch")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
