"""Where generated artifacts live: ``$GOVLAB_CACHE`` (default ``~/.cache/govlab``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from govlab.data.dataset import Dataset, load_dataset
from govlab.data.world import WorldConfig, generate_world
from govlab.io import sha256_json


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("GOVLAB_CACHE", Path.home() / ".cache" / "govlab"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_once(path: str | Path, ready: Callable[[], bool], build: Callable[[], object], *,
               wait: bool = True) -> bool:
    """Run ``build`` for cache entry ``path`` unless ``ready()``: under a lock beside the entry and
    checked again there, so that concurrent processes (test workers, notebooks) build it once while
    the others wait, instead of building it side by side. ``wait=False``: return False at once
    when another process holds the entry (True once it is ready)."""
    if not ready():
        try:
            with FileLock(f"{path}.lock", timeout=-1 if wait else 0):
                if not ready():  # another process may have built it meanwhile
                    build()
        except Timeout:
            return False
    return True


def world_dir(cfg: WorldConfig, *, progress: bool = True) -> Path:
    """The embedded world for ``cfg``, generated once into the cache (atomically, by rename)."""
    key = sha256_json(asdict(cfg))[:16]  # holds cfg.version: version 1's keys are those from before versions
    path = cache_dir("worlds") / key

    def build():
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{key}."))
        try:
            generate_world(cfg, tmp, progress=progress)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    build_once(path, (path / "metadata.jsonl").is_file, build)
    return path


def run_dataset(cfg, *, progress: bool = True) -> Dataset:
    """The dataset of a run config: its ``data`` folder, or the embedded world."""
    root = Path(cfg.data) if cfg.data else world_dir(cfg.world, progress=progress)
    return load_dataset(root, image_size=cfg.model.image_size)
