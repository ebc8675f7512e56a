"""``manifest.json``: the sha256 of every artifact of a run, checkpoints chained; and its check."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from govlab.errors import GovlabError
from govlab.io import sha256_file, sha256_json, write_json

MANIFEST = "manifest.json"
CHECKPOINT = re.compile(r"checkpoints/step_(\d+)\.safetensors")
TEMPORARY = re.compile(r"\..+\.tmp")


def _files(run: Path) -> list[str]:
    """Every file of the run (relative paths) but its manifest."""
    return sorted(rel for p in run.rglob("*") if p.is_file()
                  and (rel := p.relative_to(run).as_posix()) != MANIFEST)


def _temporary(f: str) -> bool:
    return TEMPORARY.fullmatch(f.rpartition("/")[2]) is not None


def artifacts(run: Path) -> list[str]:
    """Every file of the run (relative paths), except its manifest and the temporary files of
    unfinished writes (``govlab.io.atomic_path``), which are no artifact (``verify`` reports them)."""
    return [f for f in _files(run) if not _temporary(f)]


def chain(files: dict[str, str]) -> list[dict]:
    """Checkpoint entries in step order, each hash chained to the previous entry's."""
    out, prev = [], "0" * 64
    ckpts = sorted((int(m.group(1)), f) for f in files if (m := CHECKPOINT.fullmatch(f)))
    for step, f in ckpts:
        link = hashlib.sha256(f"{prev}:{step}:{files[f]}".encode()).hexdigest()
        out.append({"step": step, "file": f, "sha256": files[f], "prev": prev, "chain": link})
        prev = link
    return out


def write_manifest(run: str | Path) -> dict:
    """Hash every artifact and write ``manifest.json`` atomically (call it last)."""
    run = Path(run)
    files = {f: sha256_file(run / f) for f in artifacts(run)}
    manifest = {"files": files, "checkpoints": chain(files)}
    manifest["root"] = sha256_json(manifest)
    write_json(run / MANIFEST, manifest)
    return manifest


def verify(run: str | Path) -> list[str]:
    """Problems found (``changed: F``, ``added: F``, ``removed: F``, a broken chain, and
    ``unfinished write: F`` for a temporary file left by a write: the manifest is written last, so
    such a file is a write still going on or one that was interrupted); [] if intact."""
    run = Path(run)
    path = run / MANIFEST
    if not path.is_file():
        raise GovlabError(f"{run}: no {MANIFEST} to verify against")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        recorded, checkpoints, root = manifest["files"], manifest["checkpoints"], manifest["root"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise GovlabError(f"{path}: not a govlab manifest ({e})") from None
    if not (isinstance(recorded, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in recorded.items())
            and isinstance(checkpoints, list) and isinstance(root, str)):
        raise GovlabError(f"{path}: not a govlab manifest ('files' must map paths to hashes, 'checkpoints' "
                          "be a list and 'root' a hash)")
    problems = []
    if sha256_json({"files": recorded, "checkpoints": checkpoints}) != root:
        problems.append(f"changed: {MANIFEST} (root hash does not match its entries)")
    if checkpoints != chain(recorded):
        problems.append(f"changed: {MANIFEST} (checkpoint chain broken)")
    files = _files(run)
    present = {f for f in files if not _temporary(f)}
    for f in sorted(set(recorded) | present):
        if f not in present:
            problems.append(f"removed: {f}")
        elif f not in recorded:
            problems.append(f"added: {f}")
        elif sha256_file(run / f) != recorded[f]:
            problems.append(f"changed: {f}")
    return problems + [f"unfinished write: {f}" for f in files if _temporary(f)]


def require_intact(run: Path, outputs: tuple[str, ...], doing: str) -> bool:
    """Before writing ``outputs`` (paths in the run) into a run and re-sealing it with
    ``write_manifest``: whether the run is sealed, refusing a sealed run whose other files no longer
    match its manifest (re-sealing would hide the change). ``doing`` names the refused action."""
    if not (run / MANIFEST).is_file():
        return False
    problems = [p for p in verify(run) if p.partition(": ")[2] not in outputs]
    if problems:
        raise GovlabError(f"{run}: the run does not match its {MANIFEST} ({'; '.join(problems[:3])}"
                          f"{'; ...' if len(problems) > 3 else ''}); not {doing} it (`govlab verify` "
                          "lists every difference)")
    return True
