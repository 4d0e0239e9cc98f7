"""Helpers the tests share (and users may call on their own models)."""
