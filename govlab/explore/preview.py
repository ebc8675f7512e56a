"""Attenuation preview: a run's generations before and after scaling one slot, through the library."""

from __future__ import annotations

import threading

from govlab.errors import GovlabError
from govlab.explore.runs import Run


def slot_prompts(slot: str, n: int, run: Run | None = None) -> list[str]:
    """Probe captions of the world for a slot: an artist's own, stock photos for ``watermark``,
    person photos for ``identity``; for a source the world does not have, captions of its own
    records in the data ``run`` was trained on."""
    from govlab.data.world import STOCK, WEBCRAWL_SOURCE
    from govlab.eval.own_data import source_captions
    from govlab.eval.scores import probe_prompts

    source = {"watermark": STOCK.source_id, "identity": WEBCRAWL_SOURCE}.get(slot, slot)
    prompts = [p["caption"] for p in probe_prompts([source], per_prompt=1)]
    if not prompts and run is not None:
        prompts = source_captions(run.path, source, n)
    if not prompts:
        raise GovlabError(f"no probe prompts for slot {slot!r}")
    return prompts[:n]


class AttenuationPreview:
    """A run's model, and its generations with one slot scaled (``govlab.routing.slots.scale_slot``)."""

    def __init__(self, run: Run, *, n: int = 6, steps: int = 8, seed: int = 0):
        if not run.model_path.is_file():
            raise GovlabError(f"{run.path}: no model.safetensors; the attenuation preview needs a trained run")
        from govlab.models.diffusion import TextToImage
        from govlab.routing.slots import slot_names

        self.model = TextToImage.load(run.model_path)
        self.slots = slot_names(self.model)
        if not self.slots:
            raise GovlabError(f"{run.path}: this model has no slots (train it with routing.mode: routed)")
        self.run, self.n, self.steps, self.seed = run, n, steps, seed
        self._before: dict[str, object] = {}
        self._lock = threading.Lock()  # a preview scales the slot in place and restores it

    def __call__(self, slot: str, factor: float):
        """uint8 images ``(before, after)`` for ``slot``'s probe prompts, after scaling it by ``factor``."""
        from govlab.routing.slots import scale_slot

        prompts = slot_prompts(slot, self.n, self.run)
        gen = dict(seed=self.seed, steps=self.steps)
        with self._lock:
            if slot not in self._before:
                self._before[slot] = self.model.generate(prompts, **gen)
            saved = {k: v.clone() for k, v in self.model.state_dict().items() if k.startswith("slots.")}
            try:
                scale_slot(self.model, slot, factor)
                after = self.model.generate(prompts, **gen)
            finally:
                self.model.load_state_dict(saved, strict=False)
        return self._before[slot], after
