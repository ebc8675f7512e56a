"""Depth-selective gradient routing: bands, policy, exact one-backward routing, RoutedAdamW, slots."""

from govlab.routing.bands import Band, assign, make_bands, unet_presets
from govlab.routing.config import RoutingConfig
from govlab.routing.hook import RoutingHook, attach, ingest, prepare
from govlab.routing.optim import RoutedAdamW
from govlab.routing.policy import RoutingPolicy
from govlab.routing.router import Router
from govlab.routing.slots import SlotBank, expand, scale_slot, slot_names

__all__ = ["Band", "RoutedAdamW", "Router", "RoutingConfig", "RoutingHook", "RoutingPolicy", "SlotBank",
           "assign", "attach", "expand", "ingest", "make_bands", "prepare", "scale_slot", "slot_names",
           "unet_presets"]
