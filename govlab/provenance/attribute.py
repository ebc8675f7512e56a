"""Structural attribution of a prompt to sources: ablate each source's routing slot, measure the change.

Another method registers itself in ``METHODS`` with the same signature:
``fn(run, prompt, *, n, steps, seed) -> list[{"source", "score"}]`` ranked best first.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from govlab.errors import GovlabError


@torch.no_grad()
def structural(run: str | Path, prompt: str, *, n: int = 4, steps: int = 8, seed: int = 0) -> list[dict]:
    """Mean absolute change of ``n`` generations for ``prompt`` (same noise) when each source's slot
    is scaled to 0, in [0, 1] pixel units; ranked, largest first."""
    from govlab.models.diffusion import TextToImage
    from govlab.routing.config import RoutingConfig
    from govlab.routing.slots import SLOTS_ATTR, scale_slot, slot_names

    weights = Path(run) / "model.safetensors"
    model = TextToImage.load(weights)
    sequestered = set(RoutingConfig().sequestered)
    sources = [s for s in slot_names(model) if s not in sequestered]
    if not sources:
        raise GovlabError(f"{weights}: this model has no per-source slots (train with routing.mode: routed)")
    base = model.generate([prompt] * n, seed=seed, steps=steps).float() / 255
    saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(SLOTS_ATTR + ".")}
    out = []
    for s in sources:
        scale_slot(model, s, 0.0)
        ablated = model.generate([prompt] * n, seed=seed, steps=steps).float() / 255
        model.load_state_dict(saved, strict=False)
        out.append({"source": s, "score": round(float((base - ablated).abs().mean()), 6)})
    return sorted(out, key=lambda r: (-r["score"], r["source"]))


METHODS = {"structural": structural}


def attribute(run: str | Path, prompt: str, *, method: str = "structural", n: int = 4, steps: int = 8,
              seed: int = 0) -> dict:
    """Ranked sources for ``prompt`` by ``method``, with the time taken."""
    if method not in METHODS:
        raise GovlabError(f"unknown attribution method {method!r} (known: {', '.join(METHODS)})")
    t0 = time.perf_counter()
    ranked = METHODS[method](run, prompt, n=n, steps=steps, seed=seed)
    return {"run": str(run), "prompt": prompt, "method": method, "sources": ranked,
            "time_s": round(time.perf_counter() - t0, 3)}
