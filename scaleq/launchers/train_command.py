"""What ``launch/train.py`` does with its arguments: load the config, pick where the loop runs
(this process and its torchrun/deepspeed siblings, or Ray Train workers), run it, and turn every
failure into one line on stderr and an exit code (2: the input is wrong; 1: the run failed)."""

from __future__ import annotations

import argparse
import os
import sys

from scaleq.config import ConfigError, config_yaml, load_config
from scaleq.data.store import StoreError
from scaleq.models import check_buildable
from scaleq.run import run
from scaleq.train.checkpoint import CheckpointError
from scaleq.train.run_dir import RunDirError

USER_ERRORS = (ConfigError, StoreError, CheckpointError, RunDirError)  # exit 2: fix the input
RUN_FAILURES = (OSError, FloatingPointError)  # exit 1: disk, I/O, divergence


def train_command(args: argparse.Namespace) -> int:
    """Run ``launch/train.py``'s parsed arguments; the exit code."""
    try:
        # model keys are checked against the model classes here too, so --print-config refuses them
        config = check_buildable(load_config(args.config, args.overrides))
        if args.print_config:
            print(config_yaml(config), end="")
            return 0
        if args.launcher == "ray" or (args.launcher == "auto" and inside_ray_job_lazily()):
            from scaleq.launchers.ray import run_with_ray

            if args.resume_from is not None:
                raise ConfigError("--resume-from is not supported with the Ray launcher; use --resume")
            metrics = run_with_ray(config, resume=args.resume, address=args.ray_address)
            print(f"Ray Train finished: test MSE {metrics.get('test_mse', float('nan')):.6f} "
                  f"(Linear {metrics.get('linear_test_mse', float('nan')):.6f}), run directory {metrics.get('run_dir')}")
            return 0
        summary = run(config, resume=args.resume, resume_from=args.resume_from)
    except USER_ERRORS as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except RUN_FAILURES as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # one summary, not one per rank
        print(summary.describe())
    return 0


def one_line(err: BaseException) -> str:
    """The reason of ``err`` as one line. Errors raised in DataLoader workers arrive re-raised with
    the worker's whole traceback as message; their last line is the original message."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    if isinstance(err, OSError) and err.filename and err.strerror and not text.startswith("Caught "):
        text = f"{err.filename}: {err.strerror}"
    return " ".join(text.split())


def inside_ray_job_lazily() -> bool:
    from scaleq.launchers.ray import inside_ray_job  # Ray itself is imported only when used

    return inside_ray_job()
