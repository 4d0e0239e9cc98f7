"""Where trajectories come from (the N-body simulator, Water-3D, molecular dynamics) and the converters that write them as stores."""
