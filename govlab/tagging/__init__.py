"""Category and source metadata for data that has none, from captions, a taxonomy and image embeddings."""

from govlab.tagging.encoders import ClipEncoder, WorldEncoder, load_encoder
from govlab.tagging.tagger import Row, Tagger, read_untagged, tag_folder
from govlab.tagging.taxonomy import WORLD_TAXONOMY, Rule, Taxonomy, load_taxonomy

__all__ = ["ClipEncoder", "Row", "Rule", "Tagger", "Taxonomy", "WORLD_TAXONOMY", "WorldEncoder", "load_encoder",
           "load_taxonomy", "read_untagged", "tag_folder"]
