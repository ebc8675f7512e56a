"""Builders for small diffusers denoisers: a UNet (DDPM) or an SD3-style MMDiT (rectified flow), on
pixels or on the latents of a small ``AutoencoderKL``."""

from __future__ import annotations

from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel

# ModelConfig is imported from here too (its home before govlab.models.config)
from govlab.models.config import BACKBONES, LATENT_CHANNELS, ModelConfig  # noqa: F401


def build_denoiser(cfg: ModelConfig):
    """The denoiser of ``cfg.backbone``: ``build_unet`` or ``build_mmdit``."""
    return build_mmdit(cfg) if cfg.backbone == "dit" else build_unet(cfg)


def build_mmdit(cfg: ModelConfig) -> SD3Transformer2DModel:
    """An SD3-style MMDiT sized for the synthetic world: ``dit_layers`` joint blocks of width
    ``channels[-1]`` over 2x2 patches; the caption (``text_dim``) enters every block's joint
    attention, its mean over tokens as the pooled projection."""
    heads = cfg.channels[-1] // cfg.head_dim
    return SD3Transformer2DModel(
        sample_size=cfg.sample_size, patch_size=2, in_channels=cfg.noise_shape[0], out_channels=cfg.noise_shape[0],
        num_layers=cfg.dit_layers, attention_head_dim=cfg.head_dim, num_attention_heads=heads,
        joint_attention_dim=cfg.text_dim, caption_projection_dim=heads * cfg.head_dim,
        pooled_projection_dim=cfg.text_dim, pos_embed_max_size=cfg.sample_size)


def build_vae(cfg: ModelConfig) -> AutoencoderKL:
    """A small ``AutoencoderKL`` (4 latent channels, one downsampling) for ``image_size`` images."""
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                         latent_channels=LATENT_CHANNELS, norm_num_groups=8, layers_per_block=1,
                         mid_block_add_attention=False, sample_size=cfg.image_size)


def build_unet(cfg: ModelConfig) -> UNet2DConditionModel:
    """A text-conditional ``UNet2DConditionModel`` sized for the synthetic world."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.noise_shape[0], out_channels=cfg.noise_shape[0],
        block_out_channels=tuple(cfg.channels), down_block_types=down, up_block_types=up,
        mid_block_type="UNetMidBlock2DCrossAttn" if any(cfg.attention) else None,
        layers_per_block=cfg.layers_per_block, cross_attention_dim=cfg.text_dim,
        attention_head_dim=cfg.head_dim, norm_num_groups=cfg.norm_groups,
    )
