"""What the loop reads: samples from a store (sharded over ranks and workers), and a config's three splits."""
