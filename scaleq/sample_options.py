"""Which frames make a sample: the velocity sources and the rules on the frame options.

Torch-free, so that :mod:`scaleq.config` checks a ``data:`` section when the file loads and
:class:`scaleq.data.dataset.SampleSpec` checks the specs made without a config, by the same rules
written once. What depends on the store (are its trajectories long enough?) is checked where the
store is read.
"""

from __future__ import annotations

from typing import Literal

VelocitySource = Literal["store", "backward", "forward"]


def first_input_frame(velocity: VelocitySource) -> int:
    """The earliest frame a sample can start at: 'backward' velocities read frame t - 1."""
    return 1 if velocity == "backward" else 0


def check_sample_options(
    *,
    delta: int,
    input_frame: int | None,
    starts_per_trajectory: int | None,
    velocity: VelocitySource,
    prefix: str = "",
) -> None:
    """Raise ValueError naming the first option, or combination, that cannot make a sample.

    ``prefix`` is put before every option's name (``"data."`` names the config's keys).
    """
    if delta < 1:
        raise ValueError(f"{prefix}delta must be >= 1, got {delta}")
    if velocity not in ("store", "backward", "forward"):
        raise ValueError(f"{prefix}velocity must be 'store', 'backward' or 'forward', got {velocity!r}")
    if input_frame is not None and starts_per_trajectory is not None:
        raise ValueError(f"{prefix}input_frame ({input_frame}) and {prefix}starts_per_trajectory "
                         f"({starts_per_trajectory}) exclude each other: one fixed start frame or that many drawn "
                         "at random; set one of them to null")
    first = first_input_frame(velocity)
    if input_frame is not None and input_frame < first:
        why = " ('backward' reads frame input_frame - 1)" if first else ""
        raise ValueError(f"{prefix}input_frame must be >= {first} with {prefix}velocity {velocity!r}, got "
                         f"{input_frame}{why}")
    if starts_per_trajectory is not None and starts_per_trajectory < 1:
        raise ValueError(f"{prefix}starts_per_trajectory must be >= 1, got {starts_per_trajectory}")
