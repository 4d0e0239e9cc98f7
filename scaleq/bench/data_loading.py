"""Data-loading benchmark: samples/s and peak memory reading Water-3D-shaped frames.

Builds synthetic stores of 8000 particles x 3 per frame (Water-3D's size; 1000 trajectories x
1001 frames there, a scaled-down number here) and reads Water-3D samples (frames t, t + 1 and
t + 20: forward velocity, delta 20) in random order through the training DataLoader with 1, 2
and 4 workers. Memory is the peak proportional set size (PSS: shared pages counted once) of the
main process plus its workers; two store sizes show whether it grows with the store.

    python launch/bench_data.py                                   # ~1-2 minutes on 2 cores
    python launch/bench_data.py --trajectories 8 64 --frames 101 --samples 800
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleq.data.dataset import SampleSpec, TrajectoryDataset  # noqa: E402
from scaleq.data.store import StoreAttrs, StoreWriter, Trajectory, TrajectoryStore  # noqa: E402
from scaleq.io import write_rows  # noqa: E402
from scaleq.train.trainer import make_loader  # noqa: E402


def write_synthetic_store(path: Path, trajectories: int, frames: int, particles: int, seed: int = 0) -> float:
    """Water-3D-shaped random walks (positions in the unit box, particle types 0..2); returns MB on disk."""
    rng = np.random.default_rng(seed)
    attrs = StoreAttrs(kind="synthetic", dim=3, dt=0.005, default_radius=0.035, feature_names=["particle_type"])
    with StoreWriter(path, attrs, overwrite=True) as writer:
        for _ in range(trajectories):
            steps = rng.normal(scale=1e-3, size=(frames, particles, 3)).astype(np.float32)
            pos = rng.random((1, particles, 3), dtype=np.float32) + np.cumsum(steps, axis=0)
            writer.add(Trajectory(positions=pos, node_features=rng.integers(0, 3, (particles, 1))))
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


class PeakMemory:
    """Polls the summed PSS of this process and its children in a thread; ``peak`` in MB."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                    total += getattr(info, "pss", info.rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(store_path: Path, workers: int, samples: int, batch_size: int, cache_mb: int) -> tuple[float, float]:
    """Samples/s after the first batch (workers started and warm) and peak PSS in MB."""
    store = TrajectoryStore(store_path, cache_bytes=cache_mb * 2**20)
    dataset = TrajectoryDataset(store, SampleSpec(delta=20, velocity="forward"))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(workers))
    sampler = order[: samples + batch_size * workers].tolist()
    with PeakMemory() as memory:
        loader = iter(make_loader(dataset, batch_size, sampler, workers))  # type: ignore[arg-type]
        for _ in range(workers):  # one batch per worker: start-up is not throughput
            next(loader)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += batch.num_graphs
        elapsed = time.perf_counter() - start
    return count / elapsed, memory.peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, nargs="+", default=[8, 32], help="store sizes to compare")
    parser.add_argument("--frames", type=int, default=41, help="frames per trajectory (Water-3D: 1001)")
    parser.add_argument("--particles", type=int, default=8000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--samples", type=int, default=480, help="samples timed per measurement")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cache-mb", type=int, default=16, help="chunk cache per process (below the store sizes)")
    parser.add_argument("--out", type=Path, default=Path("bench"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: measured anyway
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        for trajectories in args.trajectories:
            path = Path(tmp) / f"synthetic_{trajectories}.zarr"
            size_mb = write_synthetic_store(path, trajectories, args.frames, args.particles)
            for workers in args.workers:
                rate, peak = measure(path, workers, args.samples, args.batch_size, args.cache_mb)
                rows.append({"trajectories": trajectories, "store_mb": round(size_mb, 1), "workers": workers,
                             "samples_per_s": round(rate, 1), "per_worker": round(rate / workers, 1),
                             "peak_pss_mb": round(peak, 1)})
                print(" | ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    print(f"\n{'trajectories':>12} {'store MB':>9} {'workers':>7} {'samples/s':>10} {'per worker':>10} {'peak MB':>8}")
    for r in rows:
        print(f"{r['trajectories']:>12} {r['store_mb']:>9} {r['workers']:>7} {r['samples_per_s']:>10} "
              f"{r['per_worker']:>10} {r['peak_pss_mb']:>8}")
    write_rows(rows, args.out / "bench_data.csv")
    plot(rows, args.out / "bench_data.png", args.particles)
    print(f"\nwrote {args.out / 'bench_data.csv'} and {args.out / 'bench_data.png'}")
    return 0


def plot(rows: list[dict], path: Path, particles: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
