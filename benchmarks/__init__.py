"""Benchmarks: one runner (`python -m benchmarks`, `runner.py`) over the case scripts here."""
