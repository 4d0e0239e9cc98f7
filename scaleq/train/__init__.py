"""The training loop, checkpoints and run outputs."""
