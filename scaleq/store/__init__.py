"""THE on-disk format of trajectories (versioned Zarr v3): its schema, the one writer, the reader."""
