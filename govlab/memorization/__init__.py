"""In-flight memorization detection: detectors, the monitor hook, interventions, extraction audit."""

from govlab._lazy import lazy_exports

_EXPORTS = {
    "MemorizationConfig": "govlab.memorization.config",
    "detection_auc": "govlab.memorization.detectors", "mem_ratio": "govlab.memorization.detectors",
    "noise_magnitude": "govlab.memorization.detectors", "own_ratio": "govlab.memorization.detectors",
    "pixel_features": "govlab.memorization.detectors", "regeneration_scores": "govlab.memorization.detectors",
    "unique_images": "govlab.memorization.detectors", "world_features": "govlab.memorization.detectors",
    "MemorizationMonitor": "govlab.memorization.monitor", "read_monitor": "govlab.memorization.monitor",
}
__all__ = ["MemorizationConfig", "MemorizationMonitor", "detection_auc", "mem_ratio", "noise_magnitude",
           "own_ratio", "pixel_features", "read_monitor", "regeneration_scores", "unique_images",
           "world_features"]

lazy_exports(__name__, _EXPORTS)
