"""Builders for small diffusers denoisers."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import UNet2DConditionModel


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the denoiser and caption encoder."""

    image_size: int = 16
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: tuple[bool, ...] = (False, True, True)  # cross-attention per resolution level
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_length: int = 16
    head_dim: int = 16
    norm_groups: int = 8

    def __post_init__(self):
        """What ``build_unet`` and diffusers would otherwise refuse only once training starts."""
        for name in ("image_size", "layers_per_block", "text_dim", "text_layers", "text_heads", "max_length",
                     "head_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.channels or len(self.channels) != len(self.attention):
            raise ValueError(f"channels and attention must have one entry per resolution level, got "
                             f"{len(self.channels)} and {len(self.attention)}")
        if any(c < 1 or c % self.norm_groups for c in self.channels):
            raise ValueError(f"channels must be positive multiples of norm_groups ({self.norm_groups}), "
                             f"got {list(self.channels)}")
        if self.text_dim % self.text_heads:
            raise ValueError(f"text_dim ({self.text_dim}) must be a multiple of text_heads ({self.text_heads})")


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    """A text-conditional ``UNet2DConditionModel`` sized for the synthetic world."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=3, out_channels=3,
        block_out_channels=tuple(cfg.channels), down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if any(cfg.attention) else None,
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.text_dim,
        attention_head_dim=cfg.head_dim, norm_num_groups=cfg.norm_groups,
    )
