"""Training state as safetensors: nested dicts of tensors and JSON values, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from govlab.errors import GovlabError
from govlab.io import atomic_path


def _split(obj, prefix: str, tensors: dict):
    """Replace tensors by {"__tensor__": key}, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _join(obj, tensors: dict):
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(path: str | Path, state: dict) -> None:
    """Save a nested state (dict keys may be ints, as in optimizer state) to one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "s", tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"govlab_state": json.dumps(skeleton)})


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GovlabError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), "pt") as f:
            skeleton = json.loads((f.metadata() or {})["govlab_state"])
        tensors = load_file(str(path))
    except (KeyError, ValueError, OSError, SafetensorError) as e:
        raise GovlabError(f"{path}: not a govlab checkpoint ({e})") from None
    return _join(skeleton, tensors)
