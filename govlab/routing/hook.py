"""Routing as a plug-in of the training loop: expansion, the router, RoutedAdamW, ingestion rejection."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from govlab.data.dataset import Dataset
from govlab.errors import GovlabError
from govlab.hooks import Hook
from govlab.io import write_json
from govlab.routing.bands import assign, make_bands
from govlab.routing.config import RoutingConfig
from govlab.routing.optim import RoutedAdamW
from govlab.routing.policy import CAPTION, RoutingPolicy, slot_band
from govlab.routing.router import Router
from govlab.routing.slots import (SLOTS_ATTR, banks, category_phrases, expand, expand_caption, expand_text_states,
                                  plan_slots, source_phrases)


def _key(name: str) -> str:
    return name.replace(".", "__")


def slot_sources(cfg: RoutingConfig, records: list[dict]) -> list[str]:
    if not cfg.slot_rank:
        return []
    return list(cfg.slot_sources) or sorted({r["source_id"] for r in records if cfg.style_category in r["categories"]})


def slot_bands(model: nn.Module) -> dict[str, str]:
    """Band of every slot parameter."""
    out = {}
    for bank in banks(model):
        prefix = f"{SLOTS_ATTR}.{_key(bank.target_name)}"
        for name, _, band in bank.slots:
            out[f"{prefix}.down.{_key(name)}"] = band
            out[f"{prefix}.up.{_key(name)}"] = band
    return out


def param_groups(model: nn.Module, lr: float, slot_lr_scale: float) -> list[dict]:
    """One group for the model, one for its slots when they take another learning rate."""
    named = list(model.named_parameters())
    if slot_lr_scale == 1.0:
        return [{"params": [p for _, p in named]}]
    slots = [p for n, p in named if n.startswith(SLOTS_ATTR + ".")]
    base = [p for n, p in named if not n.startswith(SLOTS_ATTR + ".")]
    return [{"params": base}, {"params": slots, "lr": lr * slot_lr_scale}]


def prepare(model: nn.Module, cfg: RoutingConfig, records: list[dict], *,
            text_states: tuple[nn.Module, int] | None = None) -> Router:
    """Resolve bands and policy (one clear error per mistake), expand the model with slots and
    adapters, and return the (not yet installed) router. ``text_states``: ``(denoiser, dim)`` of a
    model without govlab's caption encoder: the caption slots act on the text encoder's output as
    the denoiser reads it, switched on by each sample's record (``expand_text_states``) instead of
    by words of its caption."""
    bands = make_bands(cfg.bands, model)
    base = [n for n, _ in model.named_parameters() if not n.startswith(SLOTS_ATTR + ".")]
    band_of = assign(base, bands)
    sources = slot_sources(cfg, records)
    adapters = [c for c in cfg.sequestered if not (c == "identity" and cfg.identity == "reject")]
    policy = RoutingPolicy({k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.policy.items()},
                           tuple(cfg.sequestered), cfg.style_category, cfg.style_band if sources else None,
                           frozenset(cfg.confined_sources))
    policy.validate({b.name for b in bands} | set(cfg.sequestered), slots=bool(cfg.slot_rank))
    if set(cfg.confined_sources) - set(sources):
        raise GovlabError(f"routing: confined_sources {sorted(set(cfg.confined_sources) - set(sources))} have no "
                          f"slot (slot sources: {', '.join(sources) or 'none'}); a confined source's samples "
                          "reach only its own slot")
    if not hasattr(model, SLOTS_ATTR):
        expand(model, plan_slots(model, band_of, style_band=cfg.style_band, sources=sources,
                                 slot_rank=cfg.slot_rank, sequestered=adapters, sequester_rank=cfg.sequester_rank,
                                 sequester_targets=tuple(cfg.sequester_targets)))
        caption, phrases = [], {}
        if cfg.style_band == CAPTION and sources:
            caption += [(s, cfg.slot_rank, slot_band(s)) for s in sources]
            if text_states is None:
                phrases.update(source_phrases(model.tokenizer, sources))
        present = [c for c in adapters if any(c in r["categories"] for r in records)]
        if CAPTION in cfg.sequester_targets and present:  # an adapter with no samples has no triggers
            caption += [(c, cfg.sequester_rank, c) for c in present]
            if text_states is None:
                phrases.update(category_phrases(records, present, untriggered="always"))  # world v2's watermark
        if caption and text_states is not None:
            expand_text_states(model, *text_states, caption)
        elif caption:
            expand_caption(model, caption, phrases, private=cfg.mode == "routed")
    band_of.update(slot_bands(model))
    owned = set(band_of.values())
    for c in adapters:  # a sequestered sample reaches only its category's bands: they must exist
        n = sum(c in r["categories"] for r in records)
        if n and not any(b in owned for b in policy.rules.get(c, ())):
            raise GovlabError(f"routing: sequestered category {c!r} ({n} samples) routes to band(s) "
                              f"{list(policy.rules.get(c, ()))} that hold no parameter of the model (sequester_targets "
                              f"{list(cfg.sequester_targets)}); its samples would get no gradient")
    return Router(model, band_of, policy, sources)


def ingest(cfg: RoutingConfig, dataset: Dataset) -> tuple[Dataset, list[dict]]:
    """Reject-at-ingestion: drop identity samples when ``identity: reject``; returns the rejections."""
    if cfg.mode == "off" or cfg.identity != "reject":
        return dataset, []
    keep = [i for i, r in enumerate(dataset.records) if "identity" not in r["categories"]]
    rejected = [{"file": r["file_name"], "source_id": r["source_id"],
                 "reason": "identity category (routing.identity: reject)"}
                for r in dataset.records if "identity" in r["categories"]]
    return (dataset.subset(keep) if rejected else dataset), rejected


class RoutingHook(Hook):
    """Expands the model, installs the router and supplies RoutedAdamW (``mode: routed``), or only
    expands it (``mode: unrouted``, the baseline)."""

    def __init__(self, cfg: RoutingConfig, rejected: list[dict] = ()):
        self.cfg, self.rejected = cfg, list(rejected)
        self.router, self.samples = None, {}

    def on_build(self, trainer):
        self.router = prepare(trainer.model, self.cfg, trainer.dataset.records)
        t = trainer.cfg.train
        groups = param_groups(trainer.model, t.lr, self.cfg.slot_lr_scale)
        if self.cfg.mode != "routed":
            return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        self.router.install()
        self.table = self.router.table(trainer.dataset.records)
        self.rank = self.router.group_rank(self.table)
        return RoutedAdamW(groups, lr=t.lr, weight_decay=t.weight_decay, router=self.router,
                           move_unrouted=self.cfg.move_unrouted)

    def on_start(self, trainer):
        if trainer.step == 0:
            for r in self.rejected:
                trainer.events.write("ingestion_rejected", step=0, **r)

    def arrange(self, ctx):
        if self.cfg.mode != "routed":
            return
        # sort the batch by route group so that each band's samples are contiguous (the fast path);
        # the per-sample loss is order-free, so this changes nothing but the order of the sum
        ctx.permute(torch.argsort(self.rank[ctx.indices], stable=True))

    def before_forward(self, ctx):
        if self.cfg.mode == "routed":
            self.router.route(table=self.table[ctx.indices])

    def after_step(self, ctx):
        if self.cfg.mode == "routed":
            for b, n in self.router.band_counts().items():
                self.samples[b] = self.samples.get(b, 0) + n
            self.router.clear()

    def on_end(self, trainer):
        write_json(trainer.out / "routing.json", self.summary())

    def summary(self) -> dict:
        r = self.router
        params = {b: sum(p.numel() for p in r.params_of[b]) for b in r.bands}
        return {"mode": self.cfg.mode, "config": asdict(self.cfg), "bands": r.bands,
                "parameters_per_band": params, "samples_per_band": dict(self.samples),
                "slot_sources": sorted(r.slot_sources), "rejected_at_ingestion": len(self.rejected),
                "band_of": r.band_of}

    def state_dict(self) -> dict:
        return {"samples": dict(self.samples)}

    def load_state_dict(self, state: dict) -> None:
        self.samples = dict(state["samples"])


def attach(cfg, dataset: Dataset) -> tuple[Dataset, list[Hook]]:
    """For a run config: the dataset after ingestion and the routing hooks (none when routing is off)."""
    if cfg.routing.mode == "off":
        return dataset, []
    dataset, rejected = ingest(cfg.routing, dataset)
    return dataset, [RoutingHook(cfg.routing, rejected)]
