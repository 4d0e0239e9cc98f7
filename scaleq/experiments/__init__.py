"""Studies that train models from scratch: the depth sweep and its per-layer diagnostics."""
