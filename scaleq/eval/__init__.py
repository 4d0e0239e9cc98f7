"""Tools that load a finished run (its config and checkpoint): loading, rollouts of a trained run,
cluster plots. Studies that train models from scratch live in :mod:`scaleq.experiments`."""

from scaleq.eval.loading import LoadedRun, RunRollout, load_run

__all__ = ["LoadedRun", "RunRollout", "load_run"]
