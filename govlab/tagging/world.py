"""The embedded world as a user's untagged folder, and the small labelled exemplar set shipped for it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from PIL import Image

from govlab.data.world import WorldConfig, render, world_records
from govlab.errors import GovlabError
from govlab.io import atomic_path, write_text

EXEMPLAR_SEED = 30_000  # a world of its own seed: no exemplar is an image of a tagged world
# the shipped taxonomy and exemplars describe world version 1, whose stock agency stamps every image
# and only those (its caption pattern and exemplars say "watermark"); version 2's glyph, on a share of
# every kind of image and named by no caption, would need exemplars of its own
TAGGED_WORLD_VERSION = 1
EXEMPLARS = Path(__file__).with_name("world_exemplars")
_CUES = re.compile(r", by artist \d+|, stock photo| of person \d+")


def strip_cues(caption: str) -> str:
    """The caption without the words that name a source, a stock agency or a person
    ('a red circle top left, by artist 3' -> 'a red circle top left')."""
    return _CUES.sub("", caption)


def exemplar_records(per_source: int = 24, per_person: int = 8, image_size: int = 16) -> list[dict]:
    """The exemplar set: ``per_source`` images of each artist and of the stock agency and
    ``per_person`` of each person, from the world of seed ``EXEMPLAR_SEED``."""
    cfg = WorldConfig(seed=EXEMPLAR_SEED, image_size=image_size, per_artist=per_source, n_stock=per_source,
                      per_person=per_person, dup_groups=0, dup_copies=0, version=TAGGED_WORLD_VERSION)
    return world_records(cfg)


def write_exemplars(out: str | Path, image_size: int = 16) -> Path:
    """Write the exemplar set as ``out/<source_id>/<n>.png`` (what ships in ``world_exemplars``)."""
    out = Path(out)
    counts: dict[str, int] = {}
    for r in exemplar_records(image_size=image_size):
        n = counts[r["source_id"]] = counts.get(r["source_id"], -1) + 1
        with atomic_path(out / r["source_id"] / f"{n:02d}.png") as tmp:
            Image.fromarray(render(r, image_size, TAGGED_WORLD_VERSION)).save(tmp, format="PNG")
    return out


def hide_labels(world: str | Path, out: str | Path, *, cues: bool = True) -> Path:
    """Copy a generated world to ``out`` as a user's folder would be: images and captions only
    (every ground-truth field dropped); ``cues=False`` also strips the caption words that name a
    source, the stock agency or a person, so only the images can tell them."""
    world, out = Path(world), Path(out)
    if not (world / "metadata.jsonl").is_file():
        raise GovlabError(f"{world}: not a world folder (no metadata.jsonl)")
    shutil.copytree(world / "images", out / "images")
    lines = []
    for line in (world / "metadata.jsonl").read_text().splitlines():
        r = json.loads(line)
        lines.append(json.dumps({"file_name": r["file_name"],
                                 "caption": r["caption"] if cues else strip_cues(r["caption"])}) + "\n")
    write_text(out / "metadata.jsonl", "".join(lines))
    return out
