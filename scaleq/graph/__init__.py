"""Graph construction on the training device: radius and complete graphs, the cell list, edge dropping."""
