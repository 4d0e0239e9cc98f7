"""Roll a trained model out on its own predictions and show what it did.

    python launch/rollout.py --run runs/default                         # test trajectories 0 1 2 (or all, if fewer)
    python launch/rollout.py --run runs/egnn_nbody --split valid --trajectories 0 4 --steps 4 --out rollouts/egnn
    python launch/rollout.py --run runs/fastegnn_water3d --trajectories 0 --max-particles 4000 --animation gif

Writes OUT/rollout.csv (metrics per step), OUT/rollout.png (them, against the truth and the
Linear baseline), OUT/rollout_frames.png and OUT/rollout.mp4 (or .gif) for the first trajectory,
and prints one summary line. OUT defaults to RUN/rollout_SPLIT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.run_directory import BEST, CHECKPOINTS, CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help=f"run directory ({CONFIG}, {CHECKPOINTS}/)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--trajectories", type=int, nargs="+", default=None,
                        help="trajectory ids of the split (default: the first three it has, or fewer)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the run's delta (default: what fits, <= 20)")
    parser.add_argument("--start-frame", type=int, default=None, help="t0 (default: the earliest possible)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RUN/rollout_SPLIT)")
    parser.add_argument("--checkpoint", default=BEST, help=f"file in RUN/{CHECKPOINTS}/ (torch or DeepSpeed)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--animation", default="auto", choices=["auto", "mp4", "gif", "none"],
                        help="auto: MP4 when imageio-ffmpeg is installed, else GIF")
    parser.add_argument("--max-particles", type=int, default=None, help="draw at most this many particles")
    parser.add_argument("--fps", type=int, default=4)
    args = parser.parse_args(argv)
    # torch and the models are imported once the arguments are read: --help stays fast
    from scaleq.config import ConfigError
    from scaleq.eval.rollout_run import rollout_from_run
    from scaleq.store.format import StoreError
    from scaleq.train.checkpoint import CheckpointError

    try:
        outputs = rollout_from_run(
            args.run, split=args.split, trajectories=args.trajectories, steps=args.steps,
            start_frame=args.start_frame, out=args.out, checkpoint=args.checkpoint, device=args.device,
            animation=args.animation, max_particles=args.max_particles, fps=args.fps,
        )
    except (ConfigError, StoreError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(outputs.summary)
    written = [outputs.csv, outputs.plot, outputs.grid, outputs.animation]
    print("wrote " + ", ".join(str(p) for p in written if p is not None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
