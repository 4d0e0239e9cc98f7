"""Benchmarks: each one's logic, the reference EGNN they compare with, one peak-memory helper."""
