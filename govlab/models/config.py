"""The architecture of govlab's denoisers as configuration (no model code: ``govlab.config`` reads it
without importing torch or diffusers); ``govlab.models.unet`` builds the models."""

from __future__ import annotations

from dataclasses import dataclass

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
