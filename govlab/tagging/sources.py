"""Sources from what a record or its file already says: a URL's domain, EXIF artist/copyright, a folder."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

from govlab.errors import GovlabError

EXIF_ARTIST, EXIF_COPYRIGHT = 0x013B, 0x8298
MODES = "auto, url, exif, folder:N, field:NAME, none"


def check_mode(mode: str) -> str:
    if mode in ("auto", "url", "exif", "none") or re.fullmatch(r"folder:[1-9]\d*", mode) or \
            re.fullmatch(r"field:\w+", mode):
        return mode
    raise GovlabError(f"--source-from {mode!r}: expected one of {MODES}")


def slug(text: str) -> str | None:
    """A source id from free text: lower case, runs of other characters as one '_'; None when
    nothing is left (as of "©" or "---"), so that the next rule applies."""
    return re.sub(r"[^a-z0-9.]+", "_", text.strip().lower()).strip("_") or None


def domain(url: str) -> str | None:
    host = urlparse(url if "//" in url else f"//{url}").hostname
    return host[4:] if host and host.startswith("www.") else host


def exif_owner(exif) -> tuple[str, str] | None:
    """(tag name, value) of the EXIF artist, else the copyright, else None."""
    for tag, name in ((EXIF_ARTIST, "artist"), (EXIF_COPYRIGHT, "copyright")):
        value = exif.get(tag) if exif else None
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and slug(value.strip(" \x00")):
            return name, value.strip(" \x00")
    return None


def source_from_fields(rec: dict, exif, mode: str) -> tuple[str, str] | None:
    """(source id, evidence) from the record's own fields or file, or None. ``auto`` tries the
    ``url`` field, then EXIF; ``folder:N`` takes the N-th folder of ``file_name``."""
    if mode == "none":
        return None
    if mode.startswith("field:"):
        name = mode.split(":", 1)[1]
        value = rec.get(name)
        s = slug(str(value)) if value not in (None, "") else None
        return (s, f"field {name}={value!r}") if s else None
    if mode.startswith("folder:"):
        level = int(mode.split(":", 1)[1])
        parts = PurePosixPath(rec["file_name"]).parts[:-1]
        if len(parts) < level:
            return None
        s = slug(parts[level - 1])
        return (s, f"folder level {level} of {rec['file_name']!r}") if s else None
    if mode in ("auto", "url") and isinstance(rec.get("url"), str) and (host := domain(rec["url"])) \
            and (s := slug(host)):
        return s, f"url domain of {rec['url']!r}"
    if mode in ("auto", "exif") and (owner := exif_owner(exif)):
        return slug(owner[1]), f"EXIF {owner[0]} {owner[1]!r}"
    return None
