"""The taxonomy file: category -> caption patterns and exemplar images; source -> the same, plus license.

```yaml
categories:                      # keys: govlab's categories (style, composition, semantics, identity, watermark)
  identity:
    patterns: ['\\bphoto of person \\d+']   # regular expressions, case-insensitive, searched in the caption
    keywords: [selfie, portrait]           # plain words (whole-word, case-insensitive)
    exemplars: exemplars/webcrawl          # folder(s) of images that show the category (relative to this file)
    threshold: 0.2                         # embedding probability from which the category is assigned
sources:
  artist_0:
    patterns: ['\\bby artist 0\\b']
    exemplars: exemplars/artist_0          # a few of the source's images: the style rule matches clusters to them
    categories: [style]                    # every image of this source carries these
    license: CC-BY-4.0
    opt_out: false
defaults: {license: unknown, opt_out: false}
```

Exemplars are a small labelled set the user provides (a few images per source or category), never
labels of the data being tagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from govlab.data.world import CATEGORIES
from govlab.errors import GovlabError
from govlab.io import read_text, sha256_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WORLD_TAXONOMY = Path(__file__).with_name("world_taxonomy.yaml")
_CATEGORY_KEYS = {"patterns", "keywords", "exemplars", "threshold"}
_SOURCE_KEYS = {"patterns", "keywords", "exemplars", "categories", "license", "opt_out"}


@dataclass(frozen=True)
class Rule:
    """Caption patterns and exemplar images of one category or source."""

    name: str
    patterns: tuple[re.Pattern, ...] = ()
    exemplars: tuple[Path, ...] = ()  # image files
    threshold: float = 0.5
    categories: tuple[str, ...] = ()  # sources only: categories their images carry
    license: str | None = None
    opt_out: bool | None = None

    def match(self, caption: str) -> str | None:
        """The first pattern found in ``caption`` (its text), or None."""
        for p in self.patterns:
            if p.search(caption):
                return p.pattern
        return None


@dataclass(frozen=True)
class Taxonomy:
    path: Path
    categories: dict[str, Rule]
    sources: dict[str, Rule]
    license: str = "unknown"
    opt_out: bool = False
    digest: str = field(default="", compare=False)


def _list(value, where: str) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GovlabError(f"{where}: expected a string or a list of strings, got {value!r}")
    return value


def _images(folders: list[str], base: Path, where: str) -> tuple[Path, ...]:
    out = []
    for folder in folders:
        d = (base / folder).resolve()
        if not d.is_dir():
            raise GovlabError(f"{where}: exemplar folder {folder!r} not found at {d}")
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise GovlabError(f"{where}: exemplar folder {d} holds no images")
        out += files
    return tuple(out)


def _rule(name: str, spec, base: Path, where: str, keys: set[str]) -> Rule:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise GovlabError(f"{where}: expected a mapping of {', '.join(sorted(keys))}, got {spec!r}")
    unknown = set(spec) - keys
    if unknown:
        raise GovlabError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(keys))})")
    patterns = []
    for p in _list(spec.get("patterns"), f"{where}.patterns"):
        try:
            patterns.append(re.compile(p, re.IGNORECASE))
        except re.error as e:
            raise GovlabError(f"{where}.patterns: {p!r} is not a regular expression ({e})") from None
    patterns += [re.compile(rf"\b{re.escape(k)}\b", re.IGNORECASE)
                 for k in _list(spec.get("keywords"), f"{where}.keywords")]
    threshold = spec.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise GovlabError(f"{where}.threshold: must be a number in (0, 1), got {threshold!r}")
    cats = _list(spec.get("categories"), f"{where}.categories")
    for c in cats:
        if c not in CATEGORIES:
            raise GovlabError(f"{where}.categories: unknown category {c!r} (known: {', '.join(CATEGORIES)})")
    lic = spec.get("license")
    if lic is not None and not isinstance(lic, str):
        raise GovlabError(f"{where}.license: must be a string, got {lic!r}")
    opt = spec.get("opt_out")
    if opt is not None and not isinstance(opt, bool):
        raise GovlabError(f"{where}.opt_out: must be true or false, got {opt!r}")
    return Rule(name, tuple(patterns), _images(_list(spec.get("exemplars"), f"{where}.exemplars"), base, where),
                float(threshold), tuple(cats), lic, opt)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Read and check a taxonomy file (default: the embedded world's); one clear error naming the
    file and the entry for an unknown category, key, pattern or exemplar folder."""
    path = Path(path) if path is not None else WORLD_TAXONOMY
    if not path.is_file():
        raise GovlabError(f"{path}: taxonomy file not found")
    try:
        spec = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise GovlabError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise GovlabError(f"{path}: expected a mapping with 'categories' (and optionally 'sources', 'defaults')")
    unknown = set(spec) - {"categories", "sources", "defaults"}
    if unknown:
        raise GovlabError(f"{path}: unknown key {sorted(unknown)[0]!r} (known: categories, sources, defaults)")
    cats, srcs = spec.get("categories") or {}, spec.get("sources") or {}
    if not isinstance(cats, dict) or not isinstance(srcs, dict):
        raise GovlabError(f"{path}: 'categories' and 'sources' must be mappings")
    for c in cats:
        if c not in CATEGORIES:
            raise GovlabError(f"{path}: unknown category {c!r} (known: {', '.join(CATEGORIES)})")
    base = path.resolve().parent
    categories = {c: _rule(c, s, base, f"{path}: categories.{c}", _CATEGORY_KEYS) for c, s in cats.items()}
    sources = {str(s): _rule(str(s), v, base, f"{path}: sources.{s}", _SOURCE_KEYS) for s, v in srcs.items()}
    defaults = spec.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - {"license", "opt_out"}:
        raise GovlabError(f"{path}: 'defaults' takes only license and opt_out, got {defaults!r}")
    lic, opt = defaults.get("license", "unknown"), defaults.get("opt_out", False)
    if not isinstance(lic, str) or not isinstance(opt, bool):
        raise GovlabError(f"{path}: defaults.license must be a string and defaults.opt_out true or false")
    return Taxonomy(path.resolve(), categories, sources, lic, opt, digest=sha256_json(spec)[:16])
