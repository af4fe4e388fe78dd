"""Benchmarks (not part of the installed package): ``python benchmarks/load.py --help``."""
