"""Benchmarks: ``python -m dualview.bench <suite>``; each suite prints a table and writes JSON."""
