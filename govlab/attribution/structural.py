"""Structural attribution of a prompt to sources: ablate each source's routing slot, measure the change.

Another method registers itself in ``METHODS`` with the same signature:
``fn(run, prompt, *, n, steps, seed) -> list[{"source", "score"}]`` ranked best first.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from govlab.attribution.probe import Probe, model_output, prompt_probe
from govlab.errors import GovlabError
from govlab.models.diffusion import TextToImage
from govlab.routing.config import RoutingConfig
from govlab.routing.slots import SLOTS_ATTR, acting_slots, scale_slot, slot_names


@torch.no_grad()
def slot_ablation_scores(model, probe) -> list[dict]:
    """For each source with a slot: how much the model's output on ``probe`` (minus its diffusion
    loss on fixed noises and timesteps, ``govlab.attribution.probe.model_output``, the quantity that
    leave-one-out retraining and LDS measure) drops when the source's slot is scaled to 0; ranked,
    largest first. One loss evaluation per slot that can act on the probe's captions, no sampling and
    no gradients; a caption slot the captions do not switch on scores exactly 0 without one."""
    sequestered = set(RoutingConfig().sequestered)
    sources = [s for s in slot_names(model) if s not in sequestered]
    if not sources:
        raise GovlabError("this model has no per-source slots (train with routing.mode: routed)")
    acting = acting_slots(model, probe.tokens)
    base = model_output(model, probe) if acting & set(sources) else 0.0
    saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(SLOTS_ATTR + ".")}
    out = []
    for s in sources:
        if s not in acting:
            out.append({"source": s, "score": 0.0})
            continue
        scale_slot(model, s, 0.0)
        out.append({"source": s, "score": round(base - model_output(model, probe), 8)})
        model.load_state_dict(saved, strict=False)
    return sorted(out, key=lambda r: (-r["score"], r["source"]))


@torch.no_grad()
def slot_evidence_scores(model, probe, caption: str = "") -> list[dict]:
    """Structural attribution of a query that names no source: a prompt without a source's name, or an
    image with no caption (``caption`` ""). For each source with a slot: how much its slot lowers the
    diffusion loss of the query's own images (fixed noises and timesteps) when switched on, i.e. the
    model's output with the caption ``caption`` plus the source's trigger words, minus the same with
    the slot scaled to 0. The query's words choose no source: every source is tried, and the images
    and the slots decide. Two loss evaluations per source, no sampling and no gradients; ranked,
    largest first."""
    sequestered = set(RoutingConfig().sequestered)
    sources = [s for s in slot_names(model) if s not in sequestered]
    if not sources:
        raise GovlabError("this model has no per-source slots (train with routing.mode: routed)")
    phrases = getattr(model, "expansions", {}).get("caption_slots", {}).get("phrases", {})
    saved = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(SLOTS_ATTR + ".")}
    out = []
    for s in sources:
        trigger = " ".join(phrases[s][0]) if s in phrases else ""  # UNet-band slots act on any caption
        text = ", by ".join(t for t in (caption, trigger) if t) if caption else (f"by {trigger}" if trigger else "")
        named = Probe(probe.x0, model.tokenizer([text] * len(probe)), probe.noise, probe.timesteps)
        on = model_output(model, named)
        scale_slot(model, s, 0.0)
        out.append({"source": s, "score": round(on - model_output(model, named), 8)})
        model.load_state_dict(saved, strict=False)
    return sorted(out, key=lambda r: (-r["score"], r["source"]))


def structural(run: str | Path, prompt: str, *, n: int = 4, steps: int = 8, seed: int = 0) -> list[dict]:
    """Slot-ablation scores (``slot_ablation_scores``) of ``n`` images the run's model generates
    for ``prompt`` (``steps`` sampling steps, 4 fixed noises and timesteps each)."""
    weights = Path(run) / "model.safetensors"
    model = TextToImage.load(weights)
    try:
        return slot_ablation_scores(model, prompt_probe(model, prompt, n_images=n, seed=seed, steps=steps))
    except GovlabError as e:
        raise GovlabError(f"{weights}: {e}") from None


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
