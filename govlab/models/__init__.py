"""Small diffusers models and the caption encoder."""

from govlab._lazy import lazy_exports

_EXPORTS = {
    "TextToImage": "govlab.models.diffusion", "to_float": "govlab.models.diffusion",
    "to_uint8": "govlab.models.diffusion",
    "CaptionEncoder": "govlab.models.text", "CaptionTokenizer": "govlab.models.text",
    "ModelConfig": "govlab.models.config", "build_unet": "govlab.models.unet",
}
__all__ = ["CaptionEncoder", "CaptionTokenizer", "ModelConfig", "TextToImage", "build_unet",
           "to_float", "to_uint8"]

lazy_exports(__name__, _EXPORTS)
