"""Benchmarks behind ``govlab bench NAME``: each returns one flat dict of figures."""

from govlab.bench.lineage import bench_lineage
from govlab.bench.routing import bench_routing
from govlab.bench.train import bench_train

BENCHMARKS = {"train": bench_train, "routing": bench_routing, "lineage": bench_lineage}

__all__ = ["BENCHMARKS"]
