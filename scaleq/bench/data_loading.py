"""Data-loading benchmark: samples/s and peak memory reading Water-3D-shaped frames.

Builds synthetic stores of 8000 particles x 3 per frame (Water-3D's size; 1000 trajectories x
1001 frames there, a scaled-down number here) and reads Water-3D samples (frames t, t + 1 and
t + 20: forward velocity, delta 20) in random order through the training DataLoader with 1, 2
and 4 workers. Memory is the peak proportional set size (PSS: shared pages counted once) of the
main process plus its workers (:func:`scaleq.bench.memory.peak_memory` with ``children``); two
store sizes show whether it grows with the store. ``launch/bench_data_loading.py`` runs it.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaleq.bench.memory import peak_memory
from scaleq.data.dataset import SampleSpec, TrajectoryDataset, make_loader
from scaleq.io import save_figure, write_rows
from scaleq.store.format import StoreAttrs, Trajectory
from scaleq.store.reader import TrajectoryStore
from scaleq.store.writer import StoreWriter


def write_synthetic_store(path: Path, trajectories: int, frames: int, particles: int, seed: int = 0,
                          checksums: bool = True) -> float:
    """Water-3D-shaped random walks (positions in the unit box, particle types 0..2); returns MB on
    disk. ``checksums=False`` writes format version 1 (no CRC-32C per chunk), to measure their cost."""
    rng = np.random.default_rng(seed)
    attrs = StoreAttrs(kind="synthetic", dim=3, dt=0.005, default_radius=0.035, feature_names=["particle_type"])
    with StoreWriter(path, attrs, overwrite=True, checksums=checksums) as writer:
        for _ in range(trajectories):
            steps = rng.normal(scale=1e-3, size=(frames, particles, 3)).astype(np.float32)
            pos = rng.random((1, particles, 3), dtype=np.float32) + np.cumsum(steps, axis=0)
            writer.add(Trajectory(positions=pos, node_features=rng.integers(0, 3, (particles, 1))))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def measure(store_path: Path, workers: int, samples: int, batch_size: int, cache_mb: int) -> tuple[float, float]:
    """Samples/s after the first batch (workers started and warm) and peak PSS in MB."""
    store = TrajectoryStore(store_path, cache_bytes=cache_mb * 2**20)
    dataset = TrajectoryDataset(store, SampleSpec(delta=20, velocity="forward"))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(workers))
    sampler = order[: samples + batch_size * workers].tolist()
    with peak_memory("cpu", children=True) as memory:
        loader = iter(make_loader(dataset, batch_size, sampler, workers))  # type: ignore[arg-type]
        for _ in range(workers):  # one batch per worker: start-up is not throughput
            next(loader)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += batch.num_graphs
        elapsed = time.perf_counter() - start
    return count / elapsed, memory.peak_mb


def run(trajectories: Sequence[int], frames: int, particles: int, workers: Sequence[int], samples: int,
        batch_size: int, cache_mb: int, out: Path) -> list[dict[str, Any]]:
    """One row per (store size, workers); writes ``<out>/bench_data.csv`` and ``.png``, prints a table."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: measured anyway
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for count in trajectories:
            path = Path(tmp) / f"synthetic_{count}.zarr"
            size_mb = write_synthetic_store(path, count, frames, particles)
            for n in workers:
                rate, peak = measure(path, n, samples, batch_size, cache_mb)
                rows.append({"trajectories": count, "store_mb": round(size_mb, 1), "workers": n,
                             "samples_per_s": round(rate, 1), "per_worker": round(rate / n, 1),
                             "peak_pss_mb": round(peak, 1)})
                print(" | ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    print(f"\n{'trajectories':>12} {'store MB':>9} {'workers':>7} {'samples/s':>10} {'per worker':>10} {'peak MB':>8}")
    for r in rows:
        print(f"{r['trajectories']:>12} {r['store_mb']:>9} {r['workers']:>7} {r['samples_per_s']:>10} "
              f"{r['per_worker']:>10} {r['peak_pss_mb']:>8}")
    write_rows(rows, out / "bench_data.csv")
    plot(rows, out / "bench_data.png", particles)
    print(f"\nwrote {out / 'bench_data.csv'} and {out / 'bench_data.png'}")
    return rows


def plot(rows: list[dict[str, Any]], path: Path, particles: int) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for trajectories in sorted({r["trajectories"] for r in rows}):
        part = [r for r in rows if r["trajectories"] == trajectories]
        label = f"{trajectories} trajectories ({part[0]['store_mb']} MB)"
        ax_rate.plot([r["workers"] for r in part], [r["samples_per_s"] for r in part], "o-", label=label)
        ax_mem.plot([r["workers"] for r in part], [r["peak_pss_mb"] for r in part], "o-", label=label)
    ax_rate.axhline(50, color="grey", ls="--", lw=1, label="50 samples/s (one worker's target)")
    ax_rate.set(xlabel="DataLoader workers", ylabel="samples/s", title=f"{particles} particles x 3 per frame")
    ax_mem.set(xlabel="DataLoader workers", ylabel="peak PSS, MB (main + workers)", title="memory")
    for ax in (ax_rate, ax_mem):
        ax.set_ylim(bottom=0)
        ax.set_xticks(sorted({r["workers"] for r in rows}))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
