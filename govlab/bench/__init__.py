"""Benchmarks behind ``govlab bench NAME``: each returns one flat dict of figures."""

from govlab.bench.attribution import bench_attribution
from govlab.bench.explore import bench_explore
from govlab.bench.foreign import bench_foreign
from govlab.bench.index import bench_index
from govlab.bench.lineage import bench_lineage
from govlab.bench.memorization import bench_memorization
from govlab.bench.removal import bench_removal
from govlab.bench.routing import bench_routing
from govlab.bench.tagging import bench_tagging
from govlab.bench.train import bench_train

BENCHMARKS = {"train": bench_train, "routing": bench_routing, "lineage": bench_lineage,
              "explore": bench_explore, "memorization": bench_memorization,
              "index": bench_index, "attribution": bench_attribution, "tagging": bench_tagging,
              "foreign": bench_foreign, "removal": bench_removal}
DEVICE_BENCHMARKS = ("train", "routing", "index", "memorization")  # those with --device and --preset

__all__ = ["BENCHMARKS", "DEVICE_BENCHMARKS"]
