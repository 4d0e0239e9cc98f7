"""What verifying costs: store read throughput with and without chunk checksums (CRC-32C, format
version 2 against version 1), and checkpoint save/load time and bytes with and without the
SHA-256 digest beside the file.

Variants run alternately, ``repeats`` times each (the machine may be shared: alternating spreads
any load over both), and the table reports medians and the ratio checked / unchecked. The store
side reads Water-3D-shaped samples through the training DataLoader
(:func:`scaleq.bench.data_loading.measure`); the checkpoint side saves and loads the state the
torch engine writes (model and Adam state of an EGNN of ``hidden`` width) through the same calls
the engine makes. ``launch/bench_integrity.py`` runs it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from scaleq.bench.data_loading import measure, write_synthetic_store
from scaleq.digests import atomic_torch_save_with_digest, digest_path
from scaleq.io import atomic_torch_save, write_rows
from scaleq.safe_load import load_checkpoint_file, safe_load


def checkpoint_state(hidden: int, layers: int) -> dict[str, Any]:
    """What TorchEngine.save writes for an EGNN of this size after one Adam step."""
    from scaleq.models.egnn import EGNN

    model = EGNN(in_node_features=2, in_edge_features=2, hidden=hidden, layers=layers)
    optimizer = torch.optim.Adam(model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "extra": {"state": {"epoch": 1}}}


def time_checkpoints(folder: Path, state: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    rows = []
    plain, digested = folder / "plain.pt", folder / "digest.pt"
    for r in range(repeats):
        for variant, path in (("plain", plain), ("digest", digested)) if r % 2 == 0 else (("digest", digested),
                                                                                          ("plain", plain)):
            start = time.perf_counter()
            (atomic_torch_save if variant == "plain" else atomic_torch_save_with_digest)(state, path)
            saved = time.perf_counter() - start
            start = time.perf_counter()
            safe_load(path) if variant == "plain" else load_checkpoint_file(path)
            loaded = time.perf_counter() - start
            size = path.stat().st_size + (digest_path(path).stat().st_size if variant == "digest" else 0)
            rows.append({"what": "checkpoint", "variant": variant, "repeat": r, "save_s": saved, "load_s": loaded,
                         "bytes": size})
    return rows


def time_store(folder: Path, trajectories: int, frames: int, particles: int, workers: int, samples: int,
               repeats: int) -> list[dict[str, Any]]:
    paths = {"crc32c": folder / "v2.zarr", "none": folder / "v1.zarr"}
    for variant, path in paths.items():
        write_synthetic_store(path, trajectories, frames, particles, checksums=variant == "crc32c")
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the version 1 store's warning, and DataLoader's about cores
        for r in range(repeats):
            for variant in ("crc32c", "none") if r % 2 == 0 else ("none", "crc32c"):
                rate, _ = measure(paths[variant], workers, samples, batch_size=4, cache_mb=16)
                rows.append({"what": "store", "variant": variant, "repeat": r, "samples_per_s": rate})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[str]:
    def med(what: str, variant: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["what"] == what and r["variant"] == variant)

    lines = []
    if any(r["what"] == "store" for r in rows):
        a, b = med("store", "crc32c", "samples_per_s"), med("store", "none", "samples_per_s")
        lines.append(f"store read, samples/s (median): crc32c {a:.1f}, none {b:.1f}, ratio {a / b:.3f}")
    if any(r["what"] == "checkpoint" for r in rows):
        for key in ("save_s", "load_s"):
            a, b = med("checkpoint", "digest", key) * 1e3, med("checkpoint", "plain", key) * 1e3
            lines.append(f"checkpoint {key[:-2]}, ms (median): digest {a:.2f}, plain {b:.2f}, ratio {a / b:.3f}")
        a, b = med("checkpoint", "digest", "bytes"), med("checkpoint", "plain", "bytes")
        lines.append(f"checkpoint bytes: digest {a:.0f}, plain {b:.0f} (+{a - b:.0f})")
    return lines


def run(*, repeats: int, hidden: int, layers: int, trajectories: int, frames: int, particles: int, workers: int,
        samples: int, out: Path) -> list[str]:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        rows = time_checkpoints(Path(tmp), checkpoint_state(hidden, layers), repeats)
        rows += time_store(Path(tmp), trajectories, frames, particles, workers, samples, repeats)
    write_rows(rows, out / "bench_integrity.csv")
    lines = summarise(rows)
    print("\n".join(lines))
    print(f"wrote {out / 'bench_integrity.csv'}")
    return lines
