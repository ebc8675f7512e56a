"""Depth-selective gradient routing: bands, policy, exact one-backward routing, RoutedAdamW, slots."""

from govlab._lazy import lazy_exports

_EXPORTS = {
    "Band": "govlab.routing.bands", "assign": "govlab.routing.bands", "make_bands": "govlab.routing.bands",
    "unet_presets": "govlab.routing.bands",
    "RoutingConfig": "govlab.routing.config",
    "RoutingHook": "govlab.routing.hook", "attach": "govlab.routing.hook", "ingest": "govlab.routing.hook",
    "prepare": "govlab.routing.hook",
    "RoutedAdamW": "govlab.routing.optim",
    "RoutingPolicy": "govlab.routing.policy",
    "Router": "govlab.routing.router",
    "SlotBank": "govlab.routing.slots", "expand": "govlab.routing.slots", "scale_slot": "govlab.routing.slots",
    "slot_names": "govlab.routing.slots",
}
__all__ = ["Band", "RoutedAdamW", "Router", "RoutingConfig", "RoutingHook", "RoutingPolicy", "SlotBank",
           "assign", "attach", "expand", "ingest", "make_bands", "prepare", "scale_slot", "slot_names",
           "unet_presets"]

lazy_exports(__name__, _EXPORTS)
