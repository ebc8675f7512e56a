"""Load and validate an imagefolder dataset (images + ``metadata.jsonl``) with governance metadata."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from govlab.data.records import validate_record
from govlab.errors import GovlabError
from govlab.io import json_lines

MAX_SCALE = 4  # images more than this many times the configured size are refused
RESAMPLE = "bicubic"


@dataclass
class Dataset:
    """Records and their images as one uint8 tensor ``(N, 3, S, S)`` held in memory."""

    root: Path
    records: list[dict]
    images: torch.Tensor
    normalisation: dict = field(default_factory=dict)  # what the loader did to the images (see below)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def sources(self) -> list[str]:
        return sorted({r["source_id"] for r in self.records})

    def fingerprint(self) -> str:
        """sha256 of the records and the image bytes: which data a checkpoint was trained on."""
        h = hashlib.sha256(json.dumps(self.records, sort_keys=True, default=str).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def subset(self, keep: list[int]) -> "Dataset":
        return Dataset(self.root, [self.records[i] for i in keep], self.images[keep], self.normalisation)

    @property
    def has_duplicate_groups(self) -> bool:
        """Whether the data names duplicate groups (some record has ``duplicate_group`` >= 0): the
        ground truth of a planted-duplicate rate. Records without a group count as not duplicated."""
        return any(r["duplicate_group"] >= 0 for r in self.records)


def read_metadata(root: Path) -> list[dict]:
    """Parse and validate ``root/metadata.jsonl`` (errors name the file and line)."""
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise GovlabError(f"{meta}: not found (a dataset folder needs images and metadata.jsonl)")
    records = [{**validate_record(rec, where), "_line": lineno} for lineno, where, rec in json_lines(meta)]
    if not records:
        raise GovlabError(f"{meta}: no records")
    return records


def _load_image(path: Path, size: int, where: str) -> tuple[np.ndarray, tuple[int, int], str]:
    """The image as uint8 (size, size, 3), its original size and mode. Normalisation: converted to
    RGB; a non-square image is centre-cropped to a square; then resized (bicubic) to ``size``."""
    if not path.is_file():
        raise GovlabError(f"{where}: file {path.name!r} not found at {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if max(w, h) > MAX_SCALE * size:
                raise GovlabError(f"{where}: image {path.name!r} is {w}x{h}, far larger than the "
                                  f"configured size {size} (limit {MAX_SCALE * size})")
            mode = im.mode
            im = im.convert("RGB")
            if w != h:
                side = min(w, h)
                im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8), (w, h), mode
    except GovlabError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise GovlabError(f"{where}: cannot read image {path.name!r} ({e})") from None


def load_dataset(root: str | Path, *, image_size: int) -> Dataset:
    """Load and validate every record and image of a dataset folder."""
    root = Path(root).resolve()
    records = read_metadata(root)
    kept, images, sizes, modes = [], [], Counter(), Counter()
    for rec in records:
        where = f"{root / 'metadata.jsonl'} line {rec['_line']}"
        path = (root / rec["file_name"]).resolve()
        if root not in path.parents:
            raise GovlabError(f"{where}: file_name {rec['file_name']!r} escapes the dataset folder")
        image, (w, h), mode = _load_image(path, image_size, where)
        images.append(image)
        sizes[f"{w}x{h}"] += 1
        modes[mode] += 1
        kept.append(rec)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return Dataset(root, kept, tensor, image_normalisation(sizes, modes, image_size))


def image_normalisation(sizes: Counter, modes: Counter, size: int) -> dict:
    """What loading did to the images, for the report: original sizes and modes (counts), how many
    were centre-cropped to a square and resized, and a sentence saying so."""
    dims = {k: tuple(map(int, k.split("x"))) for k in sizes}
    cropped = sum(n for k, n in sizes.items() if dims[k][0] != dims[k][1])
    resized = sum(n for k, n in sizes.items() if min(dims[k]) != size)  # after any crop
    converted = sum(n for m, n in modes.items() if m != "RGB")
    total = sum(sizes.values())
    parts = [f"{resized} of {total} images resized to {size}x{size} ({RESAMPLE})" if resized
             else f"all {total} images are {size}x{size} (used as they are)"]
    if cropped:
        parts.append(f"{cropped} non-square images centre-cropped to a square first")
    if converted:
        parts.append(f"{converted} converted to RGB from {', '.join(sorted(set(modes) - {'RGB'}))}")
    return {"image_size": size, "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
            "modes": dict(modes), "resized": resized, "cropped": cropped, "converted": converted,
            "resample": RESAMPLE, "text": "; ".join(parts)}


def check_trainable(dataset: Dataset) -> None:
    """Refuse, before a run writes anything, data a text-to-image model cannot learn from: every
    caption empty (nothing conditions the model)."""
    if not any(r["caption"].strip() for r in dataset.records):
        raise GovlabError(f"{dataset.root / 'metadata.jsonl'}: every caption is empty; a text-to-image "
                          "model learns from captions (give each image one)")
