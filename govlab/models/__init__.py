"""Small diffusers models and the caption encoder."""

from govlab.models.diffusion import TextToImage, to_float, to_uint8
from govlab.models.text import CaptionEncoder, CaptionTokenizer
from govlab.models.unet import ModelConfig, build_unet

__all__ = ["CaptionEncoder", "CaptionTokenizer", "ModelConfig", "TextToImage", "build_unet",
           "to_float", "to_uint8"]
