"""Benchmarks: scripts that print measured numbers (`python -m experiments.bench.<name>`)."""
