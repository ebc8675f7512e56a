"""Bands: named groups of parameters by depth. Every parameter is in exactly one band or the trunk."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from govlab.errors import GovlabError

TRUNK = "trunk"
SLOT = "slot"  # in a policy: "the sample's own source slot"; slot bands are named "slot:<source>"
KV = ("unet.*.attn2.to_k", "unet.*.attn2.to_v")  # govlab's own model: the caption key/value projections


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


def unet_presets(levels: int, prefix: str = "unet.") -> dict[str, Band]:
    """Bands of the diffusers UNet by depth, for a UNet with ``levels`` resolution levels whose
    modules are named ``prefix...`` (``model_presets`` finds both in any model).

    ``outer``: the highest-resolution level (first down block, last up block, stem and head);
    ``middle``: every lower-resolution level and the mid block; ``cross_attention``: the key/value
    projections through which the caption enters each cross-attention layer. The three are disjoint.
    """
    kv = (f"{prefix}*.attn2.to_k", f"{prefix}*.attn2.to_v")
    outer = (f"{prefix}conv_in", f"{prefix}down_blocks.0", f"{prefix}up_blocks.{levels - 1}",
             f"{prefix}conv_norm_out", f"{prefix}conv_out")
    middle = (*[f"{prefix}down_blocks.{i}" for i in range(1, levels)], f"{prefix}mid_block",
              *[f"{prefix}up_blocks.{i}" for i in range(levels - 1)])
    return {"outer": Band("outer", outer, kv), "middle": Band("middle", middle, kv),
            "cross_attention": Band("cross_attention", kv)}


def mmdit_presets(blocks: int, prefix: str = "") -> dict[str, Band]:
    """Bands of an SD3-style MMDiT (diffusers ``SD3Transformer2DModel``) by depth, for ``blocks``
    joint transformer blocks named ``prefix transformer_blocks.i``.

    ``outer``: the patch embedding, the output head and the first and last quarter of the blocks
    (at least one each: the layers nearest the pixels, like a UNet's highest-resolution level);
    ``middle``: the blocks between; ``cross_attention``: the projections through which the caption
    enters each joint attention as keys and values (``attn.add_k_proj``, ``attn.add_v_proj``).
    """
    if blocks < 3:
        raise GovlabError(f"routing: an MMDiT of {blocks} transformer block(s) has no middle band "
                          "(depth bands need at least 3 blocks); give bands as name patterns")
    k = max(1, blocks // 4)
    kv = (f"{prefix}transformer_blocks.*.attn.add_k_proj", f"{prefix}transformer_blocks.*.attn.add_v_proj")
    outer = (f"{prefix}pos_embed", *[f"{prefix}transformer_blocks.{i}" for i in (*range(k), *range(blocks - k, blocks))],
             f"{prefix}norm_out", f"{prefix}proj_out")
    middle = tuple(f"{prefix}transformer_blocks.{i}" for i in range(k, blocks - k))
    return {"outer": Band("outer", outer, kv), "middle": Band("middle", middle, kv),
            "cross_attention": Band("cross_attention", kv)}


def _is_unet(m) -> bool:
    return all(getattr(m, a, None) is not None for a in ("conv_in", "down_blocks", "up_blocks", "conv_out"))


def _is_mmdit(m) -> bool:
    return all(getattr(m, a, None) is not None for a in ("pos_embed", "transformer_blocks", "proj_out"))


def find_denoiser(model) -> tuple[str, object, str]:
    """(name, module, kind) of the outermost diffusers UNet (``unet``: ``conv_in``, ``down_blocks``,
    ``up_blocks``, ``conv_out``) or MMDiT (``mmdit``: ``pos_embed``, ``transformer_blocks``,
    ``proj_out``) in ``model``, found by module structure; a GovlabError when there is none."""
    for name, m in model.named_modules():
        if _is_unet(m):
            return name, m, "unet"
        if _is_mmdit(m):
            return name, m, "mmdit"
    raise GovlabError(f"routing: {type(model).__name__} holds no diffusers UNet (conv_in, down_blocks, up_blocks, "
                      "conv_out) or SD3-style MMDiT (pos_embed, transformer_blocks, proj_out), so preset bands "
                      "cannot be derived; give each band as a list of parameter name patterns")


def model_presets(model) -> dict[str, Band]:
    """The preset bands (``outer``, ``middle``, ``cross_attention``) of any model holding a diffusers
    UNet2DConditionModel or SD3Transformer2DModel, derived by depth from its module structure."""
    name, m, kind = find_denoiser(model)
    prefix = f"{name}." if name else ""
    if kind == "unet":
        bands = unet_presets(len(m.down_blocks), prefix)
        present = {n for n, _ in m.named_modules()}
        # heads a UNet config may leave out (conv_norm_out is None without a final norm)
        keep = lambda pats: tuple(p for p in pats if "*" in p or p[len(prefix):] in present)  # noqa: E731
        return {k: Band(b.name, keep(b.patterns), b.exclude) for k, b in bands.items()}
    return mmdit_presets(len(m.transformer_blocks), prefix)


def make_bands(spec: dict, model) -> list[Band]:
    """Bands from config: ``{name: "preset" | [patterns...]}``; ``model``: the model whose preset
    bands are derived (``model_presets``), or, for govlab's own model, its number of UNet levels."""
    presets = unet_presets(model) if isinstance(model, int) else None
    bands = []
    for name, patterns in spec.items():
        if not isinstance(name, str) or not name or name == TRUNK or name.startswith(SLOT):
            raise GovlabError(f"routing: invalid band name {name!r} ('{TRUNK}' and '{SLOT}...' are reserved)")
        if patterns == "preset":
            if presets is None:
                presets = model_presets(model)
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
