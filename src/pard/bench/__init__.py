"""Benchmarks: every number the project reports comes from one of these commands."""
