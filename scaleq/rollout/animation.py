"""Pictures of a rollout: predicted next to true particles, as an animation and as a grid of frames.

3-D systems are drawn as scatter plots seen from one fixed camera (fixed limits and angle, so
motion is motion and not a moving view), 2-D systems flat. Points are coloured by a per-particle
value (particle type or charge, or per frame: a hierarchical model's clusters). Large systems
(8k particles and more) stay within a few seconds per frame: the scatter artists are made once
and only their data change, and ``max_particles`` draws a fixed random subset.

The animation is an MP4 when imageio's ffmpeg plugin (the ``imageio-ffmpeg`` package, the
``video`` extra) is installed, else a GIF written by matplotlib's PillowWriter (Pillow comes with
matplotlib).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMATS = ("mp4", "gif")


def mp4_available() -> bool:
    """Whether imageio's ffmpeg plugin (which ships an ffmpeg binary) is installed."""
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def default_format() -> str:
    return "mp4" if mp4_available() else "gif"


def _array(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)


class _Frames:
    """The shared state of both pictures: subsampled positions, colours, fixed view limits."""

    def __init__(self, pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray,
                 colours: torch.Tensor | np.ndarray | None, max_particles: int | None, seed: int) -> None:
        self.pred, self.true = _array(pred), _array(true)
        if self.pred.shape != self.true.shape or self.pred.ndim != 3 or self.pred.shape[2] not in (2, 3):
            raise ValueError(f"pred and true must both be [T, n, 2 or 3], got {self.pred.shape} and {self.true.shape}")
        steps, n, dim = self.pred.shape
        colour = np.zeros(n) if colours is None else _array(colours)
        if colour.shape not in ((n,), (steps, n)):
            raise ValueError(f"colours must be [{n}] or [{steps}, {n}], got {colour.shape}")
        keep = np.arange(n)
        if max_particles is not None and n > max_particles:
            keep = np.sort(np.random.default_rng(seed).choice(n, max_particles, replace=False))
        self.pred, self.true = self.pred[:, keep], self.true[:, keep]
        self.colour = colour[..., keep] if colour.ndim == 1 else colour[:, keep]
        self.total, self.shown, self.dim = n, len(keep), dim
        # the camera: the truth's extent (over all frames) plus a margin; predictions that fly off leave the view
        lo, hi = np.nanmin(self.true, axis=(0, 1)), np.nanmax(self.true, axis=(0, 1))
        pad = 0.08 * np.maximum(hi - lo, 1e-6)
        self.limits = np.stack([lo - pad, hi + pad], axis=1)  # [D, 2]
        self.vmin, self.vmax = float(np.nanmin(self.colour)), float(np.nanmax(self.colour))
        self.size = float(np.clip(30.0 * np.sqrt(50.0 / self.shown), 0.5, 30.0))

    def colour_at(self, k: int) -> np.ndarray:
        return self.colour if self.colour.ndim == 1 else self.colour[k]

    def axes(self, fig: Any, rows: int, cols: int, index: int, title: str) -> Any:
        ax = fig.add_subplot(rows, cols, index, projection="3d" if self.dim == 3 else None)
        ax.set_xlim(*self.limits[0])
        ax.set_ylim(*self.limits[1])
        if self.dim == 3:
            ax.set_zlim(*self.limits[2])
            ax.view_init(elev=20, azim=-60)
            ax.set_box_aspect(self.limits[:, 1] - self.limits[:, 0])
            ax.tick_params(labelsize=6)
        else:
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=9)
        return ax

    def scatter(self, ax: Any, pos: np.ndarray, k: int, cmap: str) -> Any:
        options: dict[str, Any] = {"c": self.colour_at(k), "cmap": cmap, "vmin": self.vmin, "vmax": self.vmax,
                                   "s": self.size, "linewidths": 0}
        if self.dim == 3:
            return ax.scatter(pos[:, 0], pos[:, 1], pos[:, 2], depthshade=False, **options)
        return ax.scatter(pos[:, 0], pos[:, 1], **options)

    def legend_handles(self, cmap: str, name: str | None, most: int = 8) -> list[Any]:
        """One marker per distinct colour value ("charge -1", "charge 1"), when there are few
        enough to name; none without a name or with a continuous colour."""
        values = np.unique(self.colour[np.isfinite(self.colour)])
        if name is None or not 1 <= len(values) <= most:
            return []
        from matplotlib.lines import Line2D
        from matplotlib.pyplot import get_cmap

        scale = (self.vmax - self.vmin) or 1.0
        return [Line2D([], [], marker="o", linestyle="", markersize=6,
                       color=get_cmap(cmap)((value - self.vmin) / scale), label=f"{name} {value:g}")
                for value in values]

    def update(self, artist: Any, pos: np.ndarray, k: int) -> None:
        if self.dim == 3:
            artist._offsets3d = (pos[:, 0], pos[:, 1], pos[:, 2])  # the documented way to move 3-D points
        else:
            artist.set_offsets(pos)
        if self.colour.ndim == 2:
            artist.set_array(self.colour_at(k))


def animate(pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray, path: str | os.PathLike[str], *,
            colours: torch.Tensor | np.ndarray | None = None, cmap: str = "coolwarm", fps: int = 4,
            max_particles: int | None = None, labels: Sequence[str] | None = None, title: str = "",
            model_name: str = "model", seed: int = 0) -> Path:
    """Write an animation of ``true`` (left) and ``pred`` (right), one frame per step, to ``path``
    (.mp4 or .gif, by its suffix). ``labels``: a caption per frame (default "step k").

    Shapes:
        pred, true: [T, n, D] with D = 2 or 3; colours: [n] or [T, n]
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation

    frames = _Frames(pred, true, colours, max_particles, seed)
    target = Path(path)
    kind = target.suffix.lstrip(".").lower()
    if kind not in FORMATS:
        raise ValueError(f"{target}: animation must end in .mp4 or .gif")
    if kind == "mp4":
        if not mp4_available():
            raise ValueError(f"{target}: MP4 needs imageio's ffmpeg plugin (pip install imageio-ffmpeg); "
                             "ask for a .gif instead")
        import imageio_ffmpeg

        matplotlib.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
        writer: Any = animation.FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"])
    else:
        writer = animation.PillowWriter(fps=fps)
    steps = frames.pred.shape[0]
    captions = list(labels) if labels is not None else [f"step {k}" for k in range(steps)]
    fig = plt.figure(figsize=(9, 4.4))
    left = frames.axes(fig, 1, 2, 1, "truth")
    right = frames.axes(fig, 1, 2, 2, model_name)
    true_points = frames.scatter(left, frames.true[0], 0, cmap)
    pred_points = frames.scatter(right, frames.pred[0], 0, cmap)
    shown = "" if frames.shown == frames.total else f" ({frames.shown} of {frames.total} particles drawn)"
    heading = fig.suptitle("", fontsize=10)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    with writer.saving(fig, str(tmp), dpi=80):
        for k in range(steps):
            frames.update(true_points, frames.true[k], k)
            frames.update(pred_points, frames.pred[k], k)
            heading.set_text(f"{title}  {captions[k]}{shown}".strip())
            writer.grab_frame()
    plt.close(fig)
    os.replace(tmp, target)
    return target


def frame_grid(pred: torch.Tensor | np.ndarray, true: torch.Tensor | np.ndarray, path: str | os.PathLike[str],
               steps: Sequence[int], *, colours: torch.Tensor | np.ndarray | None = None, cmap: str = "coolwarm",
               max_particles: int | None = None, title: str = "", model_name: str = "model", dpi: int = 90,
               seed: int = 0, colour_name: str | None = None) -> Path:
    """A PNG grid: truth (top row) and prediction (bottom row) at each of ``steps``. ``colour_name``
    (e.g. "charge"): what the colours mean; a legend names each of a few distinct values.

    Shapes:
        pred, true: [T, n, D] with D = 2 or 3; colours: [n] or [T, n]
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = _Frames(pred, true, colours, max_particles, seed)
    total = frames.pred.shape[0]
    bad = [k for k in steps if not 0 <= k < total]
    if bad or not steps:
        raise ValueError(f"frame_grid: steps must be in [0, {total - 1}], got {list(steps)}")
    cols = len(steps)
    fig = plt.figure(figsize=(2.2 * cols + 0.4, 4.6))
    for c, k in enumerate(steps):
        for r, (name, data) in enumerate((("truth", frames.true), (model_name, frames.pred))):
            ax = frames.axes(fig, 2, cols, r * cols + c + 1, f"{name}, step {k}")
            frames.scatter(ax, data[k], k, cmap)
            if frames.dim == 3:
                ax.set_xticklabels([])
                ax.set_yticklabels([])
                ax.set_zticklabels([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    legend = frames.legend_handles(cmap, colour_name)
    if legend:
        fig.subplots_adjust(bottom=0.12)
        fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, target)
    return target
