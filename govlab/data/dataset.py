"""Load and validate an imagefolder dataset (images + ``metadata.jsonl``) with governance metadata."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from govlab.data.world import CATEGORIES
from govlab.errors import GovlabError
from govlab.io import read_text

REQUIRED = {"file_name": str, "caption": str, "source_id": str, "categories": list,
            "license": str, "opt_out": bool}
MAX_SCALE = 4  # images more than this many times the configured size are refused


@dataclass
class Dataset:
    """Records and their images as one uint8 tensor ``(N, 3, S, S)`` held in memory."""

    root: Path
    records: list[dict]
    images: torch.Tensor

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
        return Dataset(self.root, [self.records[i] for i in keep], self.images[keep])


def validate_record(rec: object, where: str) -> dict:
    """Check one metadata record; raise a GovlabError naming ``where`` and the field."""
    if not isinstance(rec, dict):
        raise GovlabError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    for field, typ in REQUIRED.items():
        if field not in rec:
            raise GovlabError(f"{where}: missing required field '{field}'")
        if not isinstance(rec[field], typ):
            raise GovlabError(f"{where}: field '{field}' must be {typ.__name__}, "
                              f"got {type(rec[field]).__name__} ({rec[field]!r})")
    unknown = [c for c in rec["categories"] if c not in CATEGORIES]
    if unknown:
        raise GovlabError(f"{where}: unknown category {unknown[0]!r} (known: {', '.join(CATEGORIES)})")
    name = rec["file_name"]
    if Path(name).is_absolute() or ".." in Path(name).parts or name.startswith(("/", "\\")):
        raise GovlabError(f"{where}: file_name {name!r} escapes the dataset folder")
    return rec


def read_metadata(root: Path) -> list[dict]:
    """Parse and validate ``root/metadata.jsonl`` (errors name the file and line)."""
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise GovlabError(f"{meta}: not found (a dataset folder needs images and metadata.jsonl)")
    records = []
    for lineno, line in enumerate(read_text(meta).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta} line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GovlabError(f"{where}: not valid JSON ({e.msg})") from None
        records.append({**validate_record(rec, where), "_line": lineno})
    if not records:
        raise GovlabError(f"{meta}: no records")
    return records


def _load_image(path: Path, size: int, where: str) -> np.ndarray:
    if not path.is_file():
        raise GovlabError(f"{where}: file {path.name!r} not found at {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if max(w, h) > MAX_SCALE * size:
                raise GovlabError(f"{where}: image {path.name!r} is {w}x{h}, far larger than the "
                                  f"configured size {size} (limit {MAX_SCALE * size})")
            im = im.convert("RGB")
            if (w, h) != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            return np.asarray(im, dtype=np.uint8)
    except GovlabError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise GovlabError(f"{where}: cannot read image {path.name!r} ({e})") from None


def load_dataset(root: str | Path, *, image_size: int) -> Dataset:
    """Load and validate every record and image of a dataset folder."""
    root = Path(root).resolve()
    records = read_metadata(root)
    kept, images = [], []
    for rec in records:
        where = f"{root / 'metadata.jsonl'} line {rec['_line']}"
        path = (root / rec["file_name"]).resolve()
        if root not in path.parents:
            raise GovlabError(f"{where}: file_name {rec['file_name']!r} escapes the dataset folder")
        images.append(_load_image(path, image_size, where))
        kept.append(rec)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return Dataset(root, kept, tensor)
