"""Benchmarks behind ``govlab bench NAME``: each returns one flat dict of figures."""

from govlab.bench.attribution import bench_attribution
from govlab.bench.distributed import bench_distributed
from govlab.bench.evaluators import bench_evaluators
from govlab.bench.explore import bench_explore
from govlab.bench.foreign import bench_foreign
from govlab.bench.index import bench_index
from govlab.bench.lineage import bench_lineage
from govlab.bench.memorization import bench_memorization
from govlab.bench.removal import bench_removal
from govlab.bench.routing import bench_routing
from govlab.bench.sweep import bench_sweep
from govlab.bench.tagging import bench_tagging
from govlab.bench.train import bench_train
from govlab.bench.watermark import bench_watermark

BENCHMARKS = {"train": bench_train, "routing": bench_routing, "lineage": bench_lineage,
              "explore": bench_explore, "memorization": bench_memorization,
              "index": bench_index, "attribution": bench_attribution, "tagging": bench_tagging,
              "foreign": bench_foreign, "sweep": bench_sweep, "evaluators": bench_evaluators, "removal": bench_removal,
              "distributed": bench_distributed, "watermark": bench_watermark}
DEVICE_BENCHMARKS = ("train", "routing", "index", "memorization")  # those with --device and --preset
SWEEP_BENCHMARKS = ("sweep", "attribution", "lineage")  # those with --workers and --address (govlab.sweep)

__all__ = ["BENCHMARKS", "DEVICE_BENCHMARKS", "SWEEP_BENCHMARKS"]
