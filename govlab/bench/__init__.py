"""Benchmarks behind ``govlab bench NAME``: each returns one flat dict of figures."""

from govlab.bench.train import bench_train

BENCHMARKS = {"train": bench_train}

__all__ = ["BENCHMARKS"]
