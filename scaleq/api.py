"""The Python API, in one place (docs/api.md): load a finished run, predict, roll out, measure;
train from a config. ``import scaleq`` gives the same names (``scaleq.load_run``) without
importing torch until one is used.

    import scaleq
    run = scaleq.load_run("runs/default")
    run.predict(run.datasets["test"][0])      # [N, D]
"""

from __future__ import annotations

from scaleq.config import Config, load_config
from scaleq.eval.loading import LoadedRun, RunRollout, load_run
from scaleq.eval.rollout_run import rollout_from_run
from scaleq.run import RunSummary
from scaleq.run import run as train

__all__ = ["Config", "LoadedRun", "RunRollout", "RunSummary", "load_config", "load_run", "rollout_from_run", "train"]
