"""Builders for small diffusers denoisers: a UNet (DDPM) or an SD3-style MMDiT (rectified flow), on
pixels or on the latents of a small ``AutoencoderKL``."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel

BACKBONES = ("unet", "dit")
LATENT_CHANNELS = 4


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
    # unet: a UNet2DConditionModel, DDPM (epsilon target); dit: an SD3-style MMDiT
    # (SD3Transformer2DModel, ``dit_layers`` joint blocks, width ``channels[-1]``, patch 2) trained with
    # rectified flow (velocity target)
    backbone: str = "unet"
    dit_layers: int = 4
    # train on the latents (4 channels, half the image size) of a small AutoencoderKL fitted to the
    # training images for ``vae_steps`` steps before training, frozen after
    latent: bool = False
    vae_steps: int = 300

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
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.backbone == "dit":
            if self.dit_layers < 3:
                raise ValueError(f"dit_layers must be >= 3 (depth bands need a middle), got {self.dit_layers}")
            if self.channels[-1] % self.head_dim:
                raise ValueError(f"channels[-1] ({self.channels[-1]}) must be a multiple of head_dim ({self.head_dim})")
            if self.sample_size % 2:
                raise ValueError(f"the MMDiT's patches are 2x2: its input size ({self.sample_size}) must be even")
        if self.latent and (self.image_size % 2 or self.vae_steps < 0):
            raise ValueError(f"latent: image_size must be even (got {self.image_size}) and vae_steps >= 0")

    @property
    def sample_size(self) -> int:
        """The denoiser's input size: the image's, or its latent's (half)."""
        return self.image_size // 2 if self.latent else self.image_size

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """One denoiser input ``(C, H, W)``: pixels, or VAE latents."""
        c = LATENT_CHANNELS if self.latent else 3
        return (c, self.sample_size, self.sample_size)


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
