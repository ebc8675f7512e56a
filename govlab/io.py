"""Atomic file writes (nothing is ever left half-written), UTF-8 reads and hashing."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from govlab.errors import GovlabError


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success (with the
    permissions a plain ``open`` would give, not the temporary file's owner-only ones)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; other bytes are refused naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GovlabError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def json_lines(path: str | Path):
    """Yield ``(line number, where, object)`` for each non-blank line of a JSON-lines file, read as
    UTF-8 with an optional byte-order mark and any line ends (as Windows editors and spreadsheet
    exports write them); a line that is not a JSON object is an error naming the file and line."""
    text = read_text(path).removeprefix("\ufeff")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GovlabError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise GovlabError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        yield lineno, where, rec


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
