"""Datasets with governance metadata, and the embedded synthetic world."""

from govlab._lazy import lazy_exports

_EXPORTS = {
    "Dataset": "govlab.data.dataset", "load_dataset": "govlab.data.dataset",
    "validate_record": "govlab.data.records",
    "WorldConfig": "govlab.data.world", "generate_world": "govlab.data.world", "render": "govlab.data.world",
    "world_records": "govlab.data.world",
}
__all__ = ["Dataset", "WorldConfig", "generate_world", "load_dataset", "render", "validate_record",
           "world_records"]

lazy_exports(__name__, _EXPORTS)
