"""Train a model from a config: one process, torchrun, the deepspeed launcher or Ray Train.

    python launch/train.py                                   # the embedded default (5-body EGNN)
    python launch/train.py --config configs/egnn_nbody.yaml train.lr=1e-3 data.batch_size=50
    python launch/train.py --config C --resume               # continue runs/<name> from last.pt (none: exit 2)
    python launch/train.py --config C --resume-or-start      # continue it, or start it when it has no checkpoint
    python launch/train.py --config C --resume-from best     # ... from best.pt (or a checkpoint path)
    python launch/train.py --config C --print-config         # the resolved config, every default, and exit
    torchrun --nproc_per_node 2 launch/train.py --config C   # DDP (or engine.kind=deepspeed)
    torchrun --max-restarts 3 ... launch/train.py --config C # elastic: every start resumes-or-starts <out_dir>/<name>
    deepspeed --num_gpus 2 launch/train.py --config C engine.kind=deepspeed engine.zero_stage=2
    ray job submit -- python launch/train.py                 # Ray Train workers on a running cluster
    python launch/train.py --launcher ray engine.workers=4   # start or join a Ray cluster

The launcher is noticed, not configured: torchrun and deepspeed set RANK/WORLD_SIZE/LOCAL_RANK
(the engine reads them), `ray job submit` marks its entrypoint's environment. --launcher local
trains in this process even inside a Ray job.

Exit codes: 0 done; 2 the input is wrong (config, data, checkpoint, run directory), nothing was
left behind; 1 the run failed while running (disk full, file-size limit, I/O error, the loss or
the metrics became NaN). Either way the reason is one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleq.run_directory import LAST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue <out_dir>/<name> from its last checkpoint")
    parser.add_argument("--resume-or-start", action="store_true",
                        help="as --resume, but start a new run in <out_dir>/<name> when it has no checkpoint "
                             "(--resume alone then exits with 2)")
    parser.add_argument("--resume-from", default=None, metavar="last|best|PATH",
                        help=f"continue <out_dir>/<name> from this checkpoint (e.g. best when {LAST} is damaged)")
    parser.add_argument("--regenerate-data", action="store_true",
                        help="replace the stores at data.path with what data.generate says (without it, a "
                             "data.generate override the existing store disagrees with exits with 2)")
    parser.add_argument("--launcher", choices=["auto", "local", "ray"], default="auto",
                        help="auto: Ray Train inside `ray job submit`, else this process (and its torchrun/"
                             "deepspeed siblings); ray: start or join a Ray cluster ($RAY_ADDRESS)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS or local)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file, extends and overrides, every default) as YAML and exit")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by `deepspeed`
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the flags
    from scaleq.launchers.train_command import train_command  # torch and the models: not for --help

    return train_command(args)


if __name__ == "__main__":
    sys.exit(main())
