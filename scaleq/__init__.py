"""scaleq: E(n)-equivariant graph networks on large geometric graphs."""
