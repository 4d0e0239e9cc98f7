"""Depth experiments: EGNN against DuSEGO-EGNN at several depths (the DuSEGO paper's Table 2),
peak training memory against depth with and without gradient checkpointing, and per-layer
Dirichlet energies and gradient norms before and after training (its Fig. 4).

Accuracy: every (model, depth, delta) is trained with the project's Trainer on the same data
(read from the store once per delta and kept in memory), and reports the test MSE at the
best-validation epoch; a run whose loss becomes NaN or infinite is reported as NaN, as in the
paper's table.

Memory: one forward and backward pass on one batch, measured with
:func:`scaleq.bench.memory.peak_memory`: on CUDA the allocator's peak above what was allocated
before the pass (exact); on the CPU the rise of the peak resident set, so the measurements run in
one fresh process (large allocations go straight to mmap so that freed memory is returned): an
approximation good to a few MiB.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch_geometric.data import Batch, Data

from scaleq.bench.child import call_in_spawned_process
from scaleq.bench.memory import peak_memory
from scaleq.config import Config, config_from_dict
from scaleq.data.dataset import TrajectoryDataset
from scaleq.data.splits import open_datasets, prepare_data
from scaleq.distributed import engine_from_config
from scaleq.experiments.diagnostics import dirichlet_energies, gradient_norms, plot_per_layer
from scaleq.graph.builder import GraphBuilder
from scaleq.io import save_figure, write_rows
from scaleq.models import MODELS, DataWidths, build_model, data_widths
from scaleq.seeding import seed_everything
from scaleq.train.loop_parts import build_loop_parts
from scaleq.train.trainer import Trainer

KINDS = ("egnn", "dusego")


class InMemoryDataset(torch.utils.data.Dataset):
    """Every sample of a dataset read once and kept (N-body splits are a few MB), with the
    dataset's widths for :func:`scaleq.models.build_model`."""

    def __init__(self, dataset: TrajectoryDataset) -> None:
        self.items: list[Data] = [dataset[i] for i in range(len(dataset))]
        self.widths = data_widths(dataset)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Data:
        return self.items[i]


def model_section(config: Config, kind: str, layers: int, checkpointing: int = 0) -> dict[str, Any]:
    """The ``model:`` section for ``kind`` at ``layers``: the config's options that the model
    accepts (so EGNN shares hidden/velocity with DuSEGO and ignores the ODE's keys)."""
    accepted = inspect.signature(MODELS[kind].__init__).parameters
    options = {k: v for k, v in config.model.options.items() if k in accepted}
    return {**options, "name": kind, "layers": layers, "gradient_checkpointing": checkpointing}


def with_changes(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``config`` with whole sections or single keys replaced, validated again."""
    raw = config.to_dict()
    for key, value in sections.items():
        raw[key] = value if key == "model" else {**raw.get(key, {}), **value}
    return config_from_dict(raw, "<depth sweep>")


def build_for(config: Config, train: InMemoryDataset) -> torch.nn.Module:
    """The config's model for the training split, after seeding (same seed, same weights)."""
    seed_everything(config.seed)
    return build_model(config, train.widths)


def train_and_test(config: Config, datasets: dict[str, Any], run_dir: Path,
                   model: torch.nn.Module | None = None) -> dict[str, float]:
    """Train ``model`` (default: a fresh one from the config) in place with the project's Trainer;
    its test MSE at the best-validation epoch, NaN when training diverged."""
    engine = engine_from_config(config)  # what scaleq.run.run trains with: every engine option of the config
    model = model if model is not None else build_for(config, datasets["train"])
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result = Trainer(config, engine, model, build_loop_parts(config, engine, model, datasets), run_dir).fit()
        test, val, epoch = result.test_mse, result.best_val_mse, result.best_epoch + 1
    except FloatingPointError:
        test = val = math.nan
        epoch = -1
    if not math.isfinite(val):
        test = math.nan  # a run that never produced a finite validation MSE has no result
    return {"test_mse": test, "val_mse": val, "best_epoch": epoch, "seconds": time.perf_counter() - started}


def accuracy_sweep(config: Config, depths: Sequence[int], deltas: Sequence[int], out_dir: Path,
                   kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    """Test MSE for every kind x depth x delta; one row each."""
    prepare_data(config.data, progress=config.train.progress)
    rows = []
    for delta in deltas:
        at_delta = with_changes(config, data={"delta": delta})
        datasets = {split: InMemoryDataset(d) for split, d in open_datasets(at_delta).items()}
        for kind in kinds:
            for layers in depths:
                run = with_changes(at_delta, model=model_section(at_delta, kind, layers))
                result = train_and_test(run, datasets, out_dir / "runs" / f"{kind}_L{layers}_delta{delta}")
                row = {"model": kind, "layers": layers, "delta": delta, **result}
                print(f"  {kind:7s} L={layers:3d} delta={delta:3d}  test MSE {row['test_mse']:.5f}"
                      f"  ({row['seconds']:.0f} s)", flush=True)
                rows.append(row)
    return rows


# -- memory ---------------------------------------------------------------------------------------


def _forward_backward(model: torch.nn.Module, batch: Batch) -> None:
    loss = (model(batch)["pos"] - batch.target).pow(2).mean()
    loss.backward()


def _cpu_peaks(configs: list[Config], widths: DataWidths, batch: Batch) -> list[int]:
    torch.set_num_threads(1)
    peaks = []
    for config in configs:
        model = build_model(config, widths)
        with torch.no_grad():
            model(batch)  # first-call allocations (thread pools, lazy kernels) are not activations
        with peak_memory("cpu") as memory:
            _forward_backward(model, batch)
        peaks.append(memory.growth)
        del model
    return peaks


def depth_peaks(configs: list[Config], widths: DataWidths, batch: Batch, device: torch.device) -> list[int]:
    """Bytes a forward and backward pass of each config's model needs above its inputs."""
    if device.type == "cuda":
        peaks = []
        for config in configs:
            model = build_model(config, widths).to(device)
            on_device = batch.to(device)
            with peak_memory(device) as memory:
                _forward_backward(model, on_device)
            peaks.append(memory.growth)
            del model, on_device
        return peaks
    # one fresh process for all CPU measurements: its resident size starts small and, with large
    # blocks mapped and unmapped directly (glibc reads MALLOC_MMAP_THRESHOLD_ as the child starts),
    # falls back between measurements
    peaks = call_in_spawned_process(_cpu_peaks, configs, widths, batch, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
    return [int(p) for p in peaks]


def memory_sweep(config: Config, depths: Sequence[int], graphs: int, device: torch.device,
                 kinds: Sequence[str] = KINDS) -> list[dict[str, Any]]:
    """Peak memory of one training pass on ``graphs`` samples, per kind x depth x checkpointing."""
    prepare_data(config.data, progress=config.train.progress)
    dataset = open_datasets(config)["train"]
    batch = Batch.from_data_list([dataset[i] for i in range(min(graphs, len(dataset)))])
    batch = GraphBuilder.from_config(config.graph)(batch)  # built from CPU samples: the graph on the CPU
    grid = [(kind, layers, ck) for kind in kinds for layers in depths for ck in (0, 1)]
    peaks = depth_peaks([with_changes(config, model=model_section(config, *job)) for job in grid],
                        data_widths(dataset), batch, device)
    rows = []
    for (kind, layers, checkpointing), peak in zip(grid, peaks):
        rows.append({"model": kind, "layers": layers, "checkpointing": checkpointing,
                     "peak_mib": peak / 2**20, "device": device.type, "graphs": batch.num_graphs})
        print(f"  {kind:7s} L={layers:3d} checkpointing={checkpointing}  peak {peak / 2**20:8.1f} MiB", flush=True)
    return rows


# -- output ---------------------------------------------------------------------------------------


def accuracy_table(rows: list[dict[str, Any]], frame_steps: int = 100) -> str:
    """Test MSE x 1e-3 by model and depth (rows) and horizon (columns), like the paper's Table 2."""
    deltas = sorted({r["delta"] for r in rows})
    header = f"{'model':<22s}" + "".join(f"{f'{d * frame_steps} ts':>12s}" for d in deltas)
    lines = ["test MSE (x 1e-3)", header]
    for kind in dict.fromkeys(r["model"] for r in rows):
        for layers in sorted({r["layers"] for r in rows if r["model"] == kind}):
            name = f"{'DuSEGO-EGNN' if kind == 'dusego' else kind.upper()}-layers={layers}"
            cells = []
            for d in deltas:
                match = [r["test_mse"] for r in rows if (r["model"], r["layers"], r["delta"]) == (kind, layers, d)]
                value = match[0] if match else math.nan
                cells.append(f"{'NaN' if not math.isfinite(value) else f'{value * 1e3:.2f}':>12s}")
            lines.append(f"{name:<22s}" + "".join(cells))
    return "\n".join(lines)


def memory_table(rows: list[dict[str, Any]]) -> str:
    depths = sorted({r["layers"] for r in rows})
    lines = [f"peak memory of one training pass (MiB, {rows[0]['device']}, {rows[0]['graphs']} graphs)",
             f"{'model':<26s}" + "".join(f"{f'L={d}':>9s}" for d in depths)]
    for kind in dict.fromkeys(r["model"] for r in rows):
        for ck in (0, 1):
            cells = [next((f"{r['peak_mib']:9.1f}" for r in rows if (r["model"], r["layers"], r["checkpointing"])
                           == (kind, d, ck)), f"{'-':>9s}") for d in depths]
            lines.append(f"{kind + (' + checkpointing' if ck else ''):<26s}" + "".join(cells))
    return "\n".join(lines)


def plot_sweep(accuracy: list[dict[str, Any]], memory: list[dict[str, Any]], png: Path) -> None:
    """Left: test MSE against depth per model and horizon (NaN runs marked x on the axis);
    right: peak memory against depth with and without checkpointing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(accuracy)) + int(bool(memory))
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    axes = list(axes[0])
    if accuracy:
        ax = axes.pop(0)
        for kind in dict.fromkeys(r["model"] for r in accuracy):
            for delta in sorted({r["delta"] for r in accuracy}):
                pts = sorted((r["layers"], r["test_mse"]) for r in accuracy if (r["model"], r["delta"]) == (kind, delta))
                good = [(d, v) for d, v in pts if math.isfinite(v)]
                line = ax.plot(*zip(*good), marker="o", label=f"{kind} delta={delta}")[0] if good else None
                bad = [d for d, v in pts if not math.isfinite(v)]
                if bad:
                    ax.scatter(bad, [ax.get_ylim()[1] if good else 1.0] * len(bad), marker="x",
                               color=line.get_color() if line else "red", label=f"{kind} delta={delta}: NaN")
        ax.set_xlabel("layers")
        ax.set_ylabel("test MSE")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if memory:
        ax = axes.pop(0)
        for kind in dict.fromkeys(r["model"] for r in memory):
            for ck in (0, 1):
                pts = sorted((r["layers"], r["peak_mib"]) for r in memory if (r["model"], r["checkpointing"]) == (kind, ck))
                ax.plot(*zip(*pts), marker="o", linestyle="--" if ck else "-",
                        label=f"{kind}{' + checkpointing' if ck else ''}")
        ax.set_xlabel("layers")
        ax.set_ylabel(f"peak memory (MiB, {memory[0]['device']})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, png)


# -- per-layer diagnostics of trained and untrained stacks (the paper's Fig. 4) -------------------


def diagnostics_run(config: Config, layers: int, alphas: Sequence[float], epochs: int, graphs: int,
                    out_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Dirichlet energies and gradient norms per layer of EGNN and of DuSEGO-EGNN for each alpha
    (gamma1 = gamma2 = 1, as in Fig. 4), at initialisation and, if ``epochs`` > 0, after training
    for that many epochs. Returns (energy rows, gradient rows)."""
    prepare_data(config.data, progress=config.train.progress)
    datasets = {split: InMemoryDataset(d) for split, d in open_datasets(config).items()}
    test = datasets["test"]
    batch = Batch.from_data_list([test[i] for i in range(min(graphs, len(test)))])
    batch = GraphBuilder.from_config(config.graph)(batch)  # built from CPU samples: the graph on the CPU
    variants = [("EGNN", model_section(config, "egnn", layers))]
    variants += [(f"DuSEGO-EGNN alpha={a:g}", {**model_section(config, "dusego", layers), "alpha": a, "gamma1": 1.0,
                                               "gamma2": 1.0}) for a in alphas]
    energies: list[dict[str, Any]] = []
    gradients: list[dict[str, Any]] = []
    trained = with_changes(config, train={"epochs": max(epochs, 1), "device": "cpu"})
    for name, section in variants:
        run = with_changes(trained, model=section)
        model = build_for(run, datasets["train"])
        stages = [("init", None)]
        if epochs > 0:
            stages.append(("trained", out_dir / "runs" / name.replace(" ", "_").replace("=", "")))
        for stage, run_dir in stages:
            extra: dict[str, Any] = {}
            if run_dir is not None:
                extra = train_and_test(run, datasets, run_dir, model=model)
                print(f"  {name}: trained {epochs} epochs, test MSE {extra['test_mse']:.5f}", flush=True)
                model = model.cpu()
            tag = {"model": name, "stage": stage, "layers": layers, "test_mse": extra.get("test_mse", math.nan)}
            energies += [{**tag, **row} for row in dirichlet_energies(model, batch)]
            gradients += [{**tag, **row} for row in gradient_norms(model, batch)]
    return energies, gradients


# -- the whole sweep (launch/depth_sweep.py) ------------------------------------------------------

# a small dataset of its own and a short schedule: a few minutes on 2 CPU cores
QUICK_OVERRIDES = ["data.path=data/nbody5_quick", "data.generate.train=500", "data.generate.valid=200",
                   "data.generate.test=200", "data.generate.steps=6000", "train.epochs=20", "train.eval_every=5",
                   "train.progress=false"]


def run_sweep(config: Config, depths: Sequence[int], deltas: Sequence[int], out: Path, *, memory_graphs: int = 500,
              accuracy: bool = True, memory: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The accuracy sweep and the memory sweep (either may be left out); writes
    ``<out>/depth_accuracy.csv``, ``<out>/depth_memory.csv`` and ``<out>/depth_sweep.png`` and
    prints both tables. StoreError when the data is missing and the config cannot make it."""
    out.mkdir(parents=True, exist_ok=True)
    accuracy_rows: list[dict[str, Any]] = []
    memory_rows: list[dict[str, Any]] = []
    if accuracy:
        print(f"training {2 * len(depths) * len(deltas)} models ({config.train.epochs} epochs each) ...")
        accuracy_rows = accuracy_sweep(config, depths, deltas, out)
        write_rows(accuracy_rows, out / "depth_accuracy.csv")
    if memory:
        device = torch.device("cuda" if torch.cuda.is_available() and config.train.device != "cpu" else "cpu")
        print(f"measuring peak memory on {device} ...")
        memory_rows = memory_sweep(config, depths, memory_graphs, device)
        write_rows(memory_rows, out / "depth_memory.csv")
    if accuracy_rows:
        print(accuracy_table(accuracy_rows))
    if memory_rows:
        print(memory_table(memory_rows))
    if accuracy_rows or memory_rows:
        plot_sweep(accuracy_rows, memory_rows, out / "depth_sweep.png")
        print(f"wrote {out}/depth_*.csv and {out}/depth_sweep.png")
    return accuracy_rows, memory_rows


def diagnostics_report(config: Config, layers: int, alphas: Sequence[float], epochs: int, graphs: int,
                       out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """:func:`diagnostics_run`, then ``<out>/dirichlet_energy.csv/.png`` and
    ``<out>/gradient_norms.csv/.png`` and a table of the last layer's energies."""
    out.mkdir(parents=True, exist_ok=True)
    energies, gradients = diagnostics_run(config, layers, alphas, epochs, graphs, out)
    write_rows(energies, out / "dirichlet_energy.csv")
    write_rows(gradients, out / "gradient_norms.csv")
    plot_per_layer(energies, [("energy_h", "Dirichlet energy E(H^n)"), ("energy_x", "Dirichlet energy E(X^n)")],
                   out / "dirichlet_energy.png", f"{layers} layers")
    plot_per_layer(gradients, [("grad_params", "|dL/dtheta_n|"), ("grad_h", "|dL/dH^n|"), ("grad_x", "|dL/dX^n|")],
                   out / "gradient_norms.png", f"{layers} layers")
    last = {(r["model"], r["stage"]): r for r in energies}
    print(f"{'model':<24s}{'stage':<9s}{'E(H^L)':>12s}{'E(X^L)':>12s}{'test MSE':>11s}")
    for (model, stage), row in last.items():
        print(f"{model:<24s}{stage:<9s}{row['energy_h']:12.4g}{row['energy_x']:12.4g}{row['test_mse']:11.5f}")
    print(f"wrote {out}/dirichlet_energy.csv/.png and {out}/gradient_norms.csv/.png")
    return energies, gradients
