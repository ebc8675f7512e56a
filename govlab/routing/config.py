"""The ``routing`` section of a run config."""

from __future__ import annotations

from dataclasses import dataclass, field


MODES = ("off", "routed", "unrouted")
IDENTITY_MODES = ("sequester", "reject")


def default_bands() -> dict:
    return {"outer": "preset", "middle": "preset", "cross_attention": "preset"}


def default_policy() -> dict:
    return {"style": ["slot"], "semantics": ["outer", "middle", "cross_attention"],
            "composition": ["outer", "middle", "cross_attention"],
            "identity": ["identity"], "watermark": ["watermark"]}


@dataclass(frozen=True)
class RoutingConfig:
    """Depth-selective gradient routing (``mode: routed``); off by default.

    Each sample's categories decide which bands of the model its gradient may change; a sample
    with several categories reaches the union of their bands, and the shared trunk (every parameter
    outside all bands: time embedding, caption encoder) gets every sample that is not sequestered.
    The default policy for the embedded world:

    - ``style`` -> ``slot``: every source with style samples owns a low-rank slot on the caption
      (``style_band: caption``): the caption encoder reads the *public* caption, every source's name
      masked, and the slot of the source the caption names adds its reading of that encoding. A
      source's name therefore reaches the model only by switching on its own slot (a caption that
      names no source switches every slot off), and a style sample's gradient reaches only its own
      source's slot (expand-route-ablate, Cloud et al. 2024). ``govlab attenuate`` scales a slot's
      output; 0 removes it, and with it the model's only way to know which source a prompt names.
      Gradient routing alone does not do this: with slots on the cross-attention key/value
      projections (``style_band: cross_attention``) and the source's name in every layer's input,
      the shared layers learnt the style (measured: docs/routing.md). ``mode: unrouted`` keeps the slots
      but routes neither the words nor the gradients.
    - ``semantics``, ``composition`` -> ``outer``, ``middle`` and ``cross_attention``: shapes,
      colours and layout are learnt at every depth, shared by all sources.
    - ``identity`` and ``watermark`` are sequestered: such samples change only their own dedicated
      adapter band (``identity``/``watermark``) and nothing else, not even the trunk, so the band can
      be dropped at release. By default the adapter sits on the caption like a source slot, triggered
      by the words only that category's captions hold (``of``, ``person``; ``stock``), so it acts on
      the prompts that ask for it and on no other: an adapter on UNet layers
      (``sequester_targets``: layer patterns) acts on every sample, and the shared layers, trained
      around its constant output, lost half their shape and style accuracy (measured: docs/routing.md).
      ``identity: reject`` instead refuses identity samples at ingestion (logged to events.jsonl
      with file and reason).

    ``mode: unrouted`` builds the same expanded model (slots, adapters) but trains it with plain
    gradients and AdamW, every slot reading every caption: the baseline that shows what routing buys.
    """

    mode: str = "off"  # off | routed | unrouted
    bands: dict = field(default_factory=default_bands)  # name -> "preset" | [name patterns]
    policy: dict = field(default_factory=default_policy)  # category -> [band | "slot"]
    sequestered: tuple[str, ...] = ("identity", "watermark")  # categories whose samples reach only their own bands
    identity: str = "sequester"  # sequester | reject
    style_category: str = "style"
    style_band: str = "caption"  # where per-source slots sit: "caption" (private source words) or a UNet band
    slot_rank: int = 4  # 0: no per-source slots
    slot_sources: tuple[str, ...] = ()  # () = every source with style samples
    sequester_rank: int = 4
    sequester_targets: tuple[str, ...] = ("caption",)  # "caption" and/or UNet layer patterns
    slot_lr_scale: float = 1.0  # learning rate of every slot (per-source and sequestered) relative to train.lr
    move_unrouted: bool = False  # True: parameters with no routed gradient still take AdamW's step
    # sources whose style samples change only their own slot (no shared band, not the trunk), so
    # zeroing the slot leaves a model whose shared layers never learnt them (govlab.studies.removal)
    confined_sources: tuple[str, ...] = ()

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.identity not in IDENTITY_MODES:
            raise ValueError(f"identity must be one of {', '.join(IDENTITY_MODES)}, got {self.identity!r}")
        if self.slot_rank < 0 or self.sequester_rank < 1:
            raise ValueError("slot_rank must be >= 0 and sequester_rank >= 1")
        if not self.slot_lr_scale > 0:
            raise ValueError(f"slot_lr_scale must be > 0, got {self.slot_lr_scale}")
        if not isinstance(self.bands, dict) or not isinstance(self.policy, dict):
            raise ValueError("bands and policy must be mappings")
