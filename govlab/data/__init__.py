"""Datasets with governance metadata, and the embedded synthetic world."""

from govlab.data.dataset import Dataset, load_dataset, validate_record
from govlab.data.world import WorldConfig, generate_world, render, world_records

__all__ = ["Dataset", "WorldConfig", "generate_world", "load_dataset", "render", "validate_record",
           "world_records"]
