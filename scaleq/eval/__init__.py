"""Tools that load whole runs (a run directory's config and checkpoint): loading, rollouts of a
trained run, cluster plots, the depth sweep and the per-layer diagnostics."""
