import numpy as np
import pytest
import torch
from PIL import Image

from scaleq.rollout.animation import animate, frame_grid, mp4_available


def test_animation_has_the_asked_number_of_frames(tmp_path):
    g = torch.Generator().manual_seed(0)
    true = torch.cumsum(0.1 * torch.randn(7, 40, 3, generator=g), 0)
    pred = true + 0.05 * torch.randn(7, 40, 3, generator=g)
    path = animate(pred, true, tmp_path / "sub" / "roll.gif", colours=torch.arange(40) % 2, fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 7
        assert gif.size[0] > 200
    flat = animate(pred[:4, :, :2], true[:4, :, :2], tmp_path / "flat.gif", colours=torch.zeros(4, 40),
                   max_particles=10)
    with Image.open(flat) as gif:
        assert gif.n_frames == 4
    grid = frame_grid(pred, true, tmp_path / "grid.png", [0, 3, 6])
    with Image.open(grid) as png:
        assert png.size[0] > 300 and np.asarray(png).std() > 1  # not blank
    with pytest.raises(ValueError, match="steps must be in"):
        frame_grid(pred, true, tmp_path / "bad.png", [7])
    if not mp4_available():
        with pytest.raises(ValueError, match="imageio-ffmpeg"):
            animate(pred, true, tmp_path / "roll.mp4")
        return
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(animate(pred, true, tmp_path / "roll.mp4")))
    next(frames)  # the metadata
    assert sum(1 for _ in frames) == 7


def test_a_few_named_colour_values_get_a_legend_and_continuous_ones_none():
    from scaleq.rollout.animation import _Frames

    true = torch.zeros(2, 4, 3)
    frames = _Frames(true, true, torch.tensor([1.0, -1.0, 1.0, -1.0]), None, 0)
    assert [h.get_label() for h in frames.legend_handles("coolwarm", "charge")] == ["charge -1", "charge 1"]
    assert frames.legend_handles("coolwarm", None) == []
    many = _Frames(torch.zeros(2, 20, 3), torch.zeros(2, 20, 3), torch.linspace(0, 1, 20), None, 0)
    assert many.legend_handles("viridis", "speed") == []
