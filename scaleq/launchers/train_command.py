"""What ``launch/train.py`` does with its arguments: load the config (a resume: the run's own
config.yaml with the overrides a resume may take), pick where the loop runs (this process and its
torchrun/deepspeed siblings, or Ray Train workers), run it, and turn every failure into one line on
stderr and an exit code (:mod:`scaleq.launchers.failures`: 2 the input is wrong; 1 the run failed)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from scaleq.config import ModelConfig, config_yaml, load_config
from scaleq.data.splits import refuse_conflicting_generate
from scaleq.launchers.failures import RUN_FAILURES, USER_ERRORS, exit_code, one_line
from scaleq.launchers.resume_config import config_for_resume, require_something_to_resume
from scaleq.models import check_buildable
from scaleq.models.build import model_defaults
from scaleq.run import run
from scaleq.train import preemption
from scaleq.train.preemption import EXIT_PREEMPTED, Preempted


def train_command(args: argparse.Namespace) -> int:
    """Run ``launch/train.py``'s parsed arguments; the exit code."""
    or_start = getattr(args, "resume_or_start", False) or elastic()
    resume = args.resume or or_start or args.resume_from is not None
    try:
        # model keys are checked against the model classes here too, so --print-config refuses them
        config = check_buildable(load_config(args.config, args.overrides))
        if resume:  # the run's own config.yaml, with the overrides a resume may take
            config = check_buildable(config_for_resume(config, args.overrides, from_file=args.config is not None,
                                                       log=_print_on_rank0))
        if args.print_config:
            # every model key, its constructor's defaults included (the saved config keeps those asked for)
            full = dataclasses.replace(config, model=ModelConfig(name=config.model.name,
                                                                 options=model_defaults(config.model)))
            print(config_yaml(full), end="")
            return 0
        # one process: refused before any data is made; several ranks refuse together inside run(), once
        # they know whether they see the same checkpoints (a node without the shared out_dir sees none)
        if resume and not or_start and args.resume_from is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            require_something_to_resume(config)
        regenerate = getattr(args, "regenerate_data", False)
        if not regenerate:  # an asked-for size the existing store does not have is an error, not ignored
            refuse_conflicting_generate(config.data, generate_overrides(args.overrides))
        if args.launcher == "ray" or (args.launcher == "auto" and _inside_ray_job()):
            from scaleq.launchers.ray import run_with_ray

            metrics = run_with_ray(config, resume=resume, resume_from=args.resume_from, address=args.ray_address,
                                   regenerate_data=regenerate)
            print(f"Ray Train finished: test MSE {metrics.get('test_mse', float('nan')):.6f} "
                  f"(Linear {metrics.get('linear_test_mse', float('nan')):.6f}), run directory {metrics.get('run_dir')}")
            return 0
        with preemption.handlers():  # SIGTERM/SIGUSR1: finish the step, checkpoint, exit 75
            summary = run(config, resume=resume, resume_from=args.resume_from, regenerate_data=regenerate,
                          resume_or_start=or_start or args.resume_from is not None)
    except Preempted as err:
        print(err, file=sys.stderr)
        return EXIT_PREEMPTED
    except USER_ERRORS + RUN_FAILURES as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return exit_code(err) or 1
    if os.environ.get("RANK", "0") == "0":  # one summary, not one per rank
        print(summary.describe())
    return 0


def elastic() -> bool:
    """True under torchrun with ``--max-restarts`` > 0: every start of the workers is then
    ``--resume-or-start`` of ``<out_dir>/<name>``, so a restart continues from the last checkpoint
    on the shared out_dir by itself. Keyed on TORCHELASTIC_MAX_RESTARTS, the same in every agent of
    the job, not TORCHELASTIC_RESTART_COUNT: that counts one agent's own restarts, so the ranks of a
    node whose agent was started again (a lost node that returns) see 0 while their peers see 1, and
    the ranks would disagree on whether to resume."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0


def generate_overrides(overrides: list[str]) -> set[str]:
    """The ``data.generate`` keys set on the command line (without the prefix)."""
    prefix = "data.generate."
    return {item.partition("=")[0][len(prefix):] for item in overrides if item.startswith(prefix)}


def _print_on_rank0(line: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def _inside_ray_job() -> bool:
    from scaleq.launchers.ray import inside_ray_job  # Ray itself is imported only when used

    return inside_ray_job()
