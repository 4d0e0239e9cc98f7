"""Stores, datasets, graphs and the N-body simulator."""
