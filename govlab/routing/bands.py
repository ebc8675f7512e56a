"""Bands: named groups of parameters by depth. Every parameter is in exactly one band or the trunk."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from govlab.errors import GovlabError

TRUNK = "trunk"
SLOT = "slot"  # in a policy: "the sample's own source slot"; slot bands are named "slot:<source>"
KV = ("unet.*.attn2.to_k", "unet.*.attn2.to_v")  # the caption key/value projections of cross-attention


@dataclass(frozen=True)
class Band:
    """A name and the parameters it covers, as patterns over parameter or module names.

    A pattern matches a parameter ``unet.mid_block.resnets.0.conv1.weight`` if it matches the whole
    name (``fnmatch``: ``*`` also crosses dots) or names one of its enclosing modules
    (``unet.mid_block``). ``exclude`` patterns remove parameters again.
    """

    name: str
    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()


def matches(name: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def unet_presets(levels: int) -> dict[str, Band]:
    """Bands of the diffusers UNet by depth, for a UNet with ``levels`` resolution levels.

    ``outer``: the highest-resolution level (first down block, last up block, stem and head);
    ``middle``: every lower-resolution level and the mid block; ``cross_attention``: the key/value
    projections through which the caption enters each cross-attention layer. The three are disjoint.
    """
    outer = ("unet.conv_in", "unet.down_blocks.0", f"unet.up_blocks.{levels - 1}", "unet.conv_norm_out",
             "unet.conv_out")
    middle = (*[f"unet.down_blocks.{i}" for i in range(1, levels)], "unet.mid_block",
              *[f"unet.up_blocks.{i}" for i in range(levels - 1)])
    return {"outer": Band("outer", outer, KV), "middle": Band("middle", middle, KV),
            "cross_attention": Band("cross_attention", KV)}


def make_bands(spec: dict, levels: int) -> list[Band]:
    """Bands from config: ``{name: "preset" | [patterns...]}``."""
    presets = unet_presets(levels)
    bands = []
    for name, patterns in spec.items():
        if not isinstance(name, str) or not name or name == TRUNK or name.startswith(SLOT):
            raise GovlabError(f"routing: invalid band name {name!r} ('{TRUNK}' and '{SLOT}...' are reserved)")
        if patterns == "preset":
            if name not in presets:
                raise GovlabError(f"routing: no preset band {name!r} (presets: {', '.join(presets)})")
            bands.append(presets[name])
        elif isinstance(patterns, (list, tuple)) and patterns and all(isinstance(p, str) for p in patterns):
            bands.append(Band(name, tuple(patterns)))
        else:
            raise GovlabError(f"routing: band {name!r} must be 'preset' or a non-empty list of name patterns")
    return bands


def assign(param_names: list[str], bands: list[Band]) -> dict[str, str]:
    """Band of every parameter (``trunk`` where no band claims it).

    Raises a GovlabError for a pattern that matches nothing and for two bands claiming one parameter.
    """
    owner: dict[str, str] = {}
    seen_names = set()
    for band in bands:
        if band.name in seen_names:
            raise GovlabError(f"routing: band {band.name!r} is defined twice")
        seen_names.add(band.name)
        for pattern in band.patterns:
            hits = [n for n in param_names if matches(n, pattern)]
            if not hits:
                raise GovlabError(f"routing: band {band.name!r}: pattern {pattern!r} matches no parameter "
                                  f"of the model")
            for n in hits:
                if any(matches(n, x) for x in band.exclude):
                    continue
                if owner.get(n, band.name) != band.name:
                    raise GovlabError(f"routing: parameter {n!r} is claimed by bands {owner[n]!r} and "
                                      f"{band.name!r}; bands must not overlap")
                owner[n] = band.name
    return {n: owner.get(n, TRUNK) for n in param_names}
