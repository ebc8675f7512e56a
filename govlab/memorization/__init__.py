"""In-flight memorization detection: detectors, the monitor hook, interventions, extraction audit."""

from govlab.memorization.config import MemorizationConfig
from govlab.memorization.detectors import (detection_auc, mem_ratio, noise_magnitude, own_ratio, pixel_features,
                                           regeneration_scores, unique_images, world_features)
from govlab.memorization.monitor import MemorizationMonitor, read_monitor

__all__ = ["MemorizationConfig", "MemorizationMonitor", "detection_auc", "mem_ratio", "noise_magnitude",
           "own_ratio", "pixel_features", "read_monitor", "regeneration_scores", "unique_images",
           "world_features"]
