"""Expansion: low-rank slots beside chosen layers (per-source style slots, sequestered adapters).

A ``SlotBank`` sits beside one Linear or Conv2d layer and adds ``up(down(x))`` to its output, one
low-rank pair per slot (LoRA shape: ``down`` random, ``up`` zero, so a fresh slot changes nothing).
All slots of a bank run as one concatenated pair of ops. Each slot is its own band
(``slot:<source>``, ``identity``, ``watermark``), so routing can send a sample to its slot only;
scaling a slot's ``up`` weights scales its contribution and 0 removes it.

Slots on the caption (``expand_caption``: per-source slots, sequestered adapters) sit beside the
caption encoder instead, each with trigger phrases (a source's name; words only a sequestered
category's captions hold). With private triggers, the encoder reads the *public* caption (every
trigger masked) and the slots whose triggers the caption holds add to its output: a source's name
reaches the rest of the model only by switching on its own slot.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import zlib

import torch
from torch import nn
from torch.nn import functional as F

from govlab.errors import GovlabError
from govlab.models.text import PAD, words
from govlab.routing import ops
from govlab.routing.bands import SLOT
from govlab.routing.policy import CAPTION, slot_band

SLOT_PREFIX = SLOT + ":"

SLOTS_ATTR = "slots"


def _key(name: str) -> str:
    return name.replace(".", "__")


class SlotBank(nn.Module):
    """Low-rank adapters beside one layer; ``slots`` is ``[(name, rank, band), ...]``."""

    def __init__(self, target_name: str, target: nn.Module, slots: list[tuple[str, int, str]]):
        super().__init__()
        w = target.weight
        if type(target) is nn.Linear:
            self.kind, fan_in, out = "linear", target.in_features, target.out_features
        elif type(target) is nn.Conv2d and target.groups == 1 and not isinstance(target.padding, str):
            self.kind, out = "conv", target.out_channels
            fan_in = target.in_channels * math.prod(target.kernel_size)
            self.geometry = (list(target.stride), list(target.padding), list(target.dilation))
        else:
            raise GovlabError(f"routing: cannot attach slots to {target_name!r} ({type(target).__name__}); "
                              "slots go beside Linear or Conv2d layers")
        self.target_name = target_name
        self.slots = [(str(n), int(r), str(b)) for n, r, b in slots]
        self.down, self.up = nn.ParameterDict(), nn.ParameterDict()
        for name, rank, _ in self.slots:
            g = torch.Generator().manual_seed(zlib.crc32(f"{target_name}/{name}".encode()))
            if self.kind == "linear":
                shape_d, shape_u = (rank, fan_in), (out, rank)
            else:
                shape_d, shape_u = (rank, target.in_channels, *target.kernel_size), (out, rank, 1, 1)
            bound = 1 / math.sqrt(fan_in)
            down = (torch.rand(shape_d, generator=g) * 2 - 1) * bound
            self.down[_key(name)] = nn.Parameter(down.to(w.dtype).to(w.device))
            self.up[_key(name)] = nn.Parameter(torch.zeros(shape_u, dtype=w.dtype, device=w.device))
        self.register_buffer("col_slot", torch.cat([torch.full((r,), i) for i, (_, r, _) in
                                                    enumerate(self.slots)]).to(w.device), persistent=False)
        self.router = None  # set while a Router is installed
        self.triggers = None  # caption slots with private triggers: CaptionTriggers

    @property
    def names(self) -> list[str]:
        return [n for n, _, _ in self.slots]

    def _op(self, x, weight, gmask=None, xmask=None, geometry=True):
        if self.kind == "linear":
            if gmask is None and xmask is None:
                return F.linear(x, weight)
            return ops.masked_linear(x, weight, None, gmask, xmask)
        stride, padding, dilation = self.geometry if geometry else ([1, 1], [0, 0], [1, 1])
        if gmask is None and xmask is None:
            return F.conv2d(x, weight, None, stride, padding, dilation)
        return ops.masked_conv2d(x, weight, None, gmask, xmask, stride, padding, dilation, 1)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """``gate`` (B, slots) 0/1, optional: switches slots on and off per sample."""
        keys = [_key(n) for n in self.names]
        masks = self.router.bank_masks(self, x) if self.router is not None else None
        cols, live = masks if masks is not None else (None, [True] * len(keys))
        # cols: (B, total rank) 0/1, or None when every slot's parameters see every sample
        down = torch.cat([self.down[k] if on else self.down[k].detach() for k, on in zip(keys, live)])
        up = torch.cat([self.up[k] if on else self.up[k].detach() for k, on in zip(keys, live)], dim=1)
        h = self._op(x, down, gmask=cols)
        if gate is not None:
            h = h * ops.bcast(gate.to(h.dtype)[:, self.col_slot], h, -1 if self.kind == "linear" else 1)
        return self._op(h, up, xmask=cols, geometry=False)


def _add_bank(bank: SlotBank):
    def hook(module, args, output):
        return output + bank(args[0])
    return hook


def banks(model: nn.Module) -> list[SlotBank]:
    return list(getattr(model, SLOTS_ATTR, {}).values()) if hasattr(model, SLOTS_ATTR) else []


def expand(model: nn.Module, plan: dict[str, list[tuple[str, int, str]]]) -> None:
    """Attach slot banks, ``{target module name: [(slot, rank, band), ...]}``; recorded in the model's
    ``expansions`` so that a saved model reloads with the same slots."""
    if not plan:
        return
    if not hasattr(model, SLOTS_ATTR):
        setattr(model, SLOTS_ATTR, nn.ModuleDict())
    container = getattr(model, SLOTS_ATTR)
    for target, slots in plan.items():
        if _key(target) in container:
            raise GovlabError(f"routing: layer {target!r} already has slots")
        module = model.get_submodule(target)
        bank = SlotBank(target, module, slots)
        container[_key(target)] = bank
        module.register_forward_hook(_add_bank(bank))
    record = dict(getattr(model, "expansions", {}))
    record["slot_banks"] = {**record.get("slot_banks", {}), **{t: [list(s) for s in v] for t, v in plan.items()}}
    model.expansions = record


def source_phrases(tokenizer, sources: list[str]) -> dict[str, list[list[str]]]:
    """Each source's trigger: its name (``artist_3`` -> the words ``artist 3``)."""
    out = {}
    for s in sources:
        name = words(s.replace("_", " "))
        unknown = [w for w in name if w not in tokenizer.index]
        if not name or unknown:
            raise GovlabError(f"routing: source {s!r} is never named in the captions (words not in the "
                              f"vocabulary: {', '.join(unknown) or s!r}); slots on the caption need "
                              "the source's name in its captions")
        out[s] = [name]
    return out


def category_phrases(records: list[dict], categories: list[str], *,
                     untriggered: str = "raise") -> dict[str, list[list[str]]]:
    """Each sequestered category's triggers: the words in every caption of its samples and in no
    other caption (the embedded world: ``of``, ``person`` for identity; world version 1: ``stock`` for
    watermark). A category no such word marks (world version 2's watermark: captions never mention
    it) is refused, or with ``untriggered="always"`` gets the empty phrase ``[]``, which every caption
    holds: its adapter acts on every prompt, is trained by the category's samples only, and dropping
    it removes what they taught from every generation."""
    out = {}
    for c in categories:
        mine = [set(words(r["caption"])) for r in records if c in r["categories"]]
        others = set().union(*[words(r["caption"]) for r in records if c not in r["categories"]])
        found = sorted(set.intersection(*mine) - others) if mine else []
        if not found and untriggered == "always":
            out[c] = [[]]
            continue
        if not found:
            raise GovlabError(f"routing: the captions of {c!r} samples share no word that other captions "
                              f"lack, so a caption adapter cannot tell when to act; set "
                              f"routing.sequester_targets to UNet layer patterns instead")
        out[c] = [[w] for w in found]
    return out


class CaptionTriggers:
    """Where each caption slot's trigger phrases occur in token ids."""

    def __init__(self, tokenizer, phrases: dict[str, list[list[str]]]):
        self.ids = [[torch.tensor([tokenizer.index[w] for w in p]) for p in ps] for ps in phrases.values()]
        self.pad = tokenizer.index[PAD]

    def find(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``named`` (B, slots): the caption holds one of the slot's phrases; ``where`` (B, L): their
        positions. Out-of-place ops only, so that it runs under ``torch.func.vmap`` (D-TRAK)."""
        length = tokens.shape[1]
        where = torch.zeros_like(tokens, dtype=torch.bool)
        named = []
        for phrases in self.ids:
            found = torch.zeros_like(tokens[:, 0], dtype=torch.bool)
            for ids in phrases:
                n = len(ids)
                if n == 0:  # the empty phrase: every caption holds it (an always-on adapter)
                    found = torch.ones_like(found)
                    continue
                if n > length:
                    continue
                hit = (tokens.unfold(1, n, 1) == ids.to(tokens.device)).all(-1)  # (B, L - n + 1)
                found = found | hit.any(1)
                for k in range(n):
                    where = where | F.pad(hit.to(torch.uint8), (k, n - 1 - k)).bool()
            named.append(found)
        return torch.stack(named, 1), where


def expand_caption(model: nn.Module, slots: list[tuple[str, int, str]], phrases: dict[str, list[list[str]]],
                   *, private: bool) -> None:
    """Slots beside ``model.text``, ``[(name, rank, band), ...]``, each with its trigger phrases
    (recorded in ``expansions``). ``private``: the encoder reads the *public* caption (every trigger
    phrase masked) and each slot whose phrases the caption holds adds its reading of that encoding,
    so a trigger reaches the model only as the switch of its own slot; otherwise every slot reads
    every caption and adds to its plain encoding (the unrouted baseline). One encoder pass either way."""
    if not hasattr(model, SLOTS_ATTR):
        setattr(model, SLOTS_ATTR, nn.ModuleDict())
    dim, like = model.text.norm.normalized_shape[0], model.text.norm.weight
    bank = SlotBank("text", nn.Linear(dim, dim, bias=False, device=like.device, dtype=like.dtype), slots)
    getattr(model, SLOTS_ATTR)[_key("text")] = bank
    if private:
        bank.triggers = CaptionTriggers(model.tokenizer, {n: phrases[n] for n in bank.names})
    triggers, depth, gate = bank.triggers, [0], [None]

    # nested calls (the router batch-splitting the encoder) pass through; the outermost masks the
    # triggers on the way in and adds the slots on the way out
    def enter(module, args):
        depth[0] += 1
        if depth[0] > 1 or not private:
            return None
        gate[0], where = triggers.find(args[0])
        return (args[0].masked_fill(where, triggers.pad), *args[1:])

    def leave(module, args, output):
        try:
            if depth[0] > 1 or output is None:  # nested, or a forward that raised
                return output
            return output + bank(output, gate=gate[0])
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                gate[0] = None

    model.text.register_forward_pre_hook(enter)
    model.text.register_forward_hook(leave, always_call=True)
    model.expansions = {**getattr(model, "expansions", {}),
                        "caption_slots": {"slots": [list(x) for x in bank.slots],
                                          "phrases": {n: phrases[n] for n in bank.names}, "private": private}}


class RecordGate:
    """Which slots on an external text encoder's output act on each sample: a source's slot on the
    samples of that source, a sequestered category's adapter on the samples of that category.

    ``set(records)`` gates the next forward row by row (a governed step: the batch's records);
    outside a step, the slots named by ``using`` act on every row (none by default: the model as
    every source shares it)."""

    def __init__(self, slots: list[tuple[str, int, str]]):
        self.slots = [(n, b.startswith(SLOT_PREFIX)) for n, _, b in slots]
        self.rows: torch.Tensor | None = None
        self.fixed: frozenset[str] = frozenset()

    def set(self, records: list[dict]) -> None:
        self.rows = torch.tensor([[float(r["source_id"] == n if per_source else n in r["categories"])
                                   for n, per_source in self.slots] for r in records])

    def clear(self) -> None:
        self.rows = None

    @contextlib.contextmanager
    def using(self, *names: str):
        """Slots ``names`` act on every row inside (sampling a source's style: its slot on)."""
        unknown = set(names) - {n for n, _ in self.slots}
        if unknown:
            raise GovlabError(f"no slot {sorted(unknown)[0]!r} on the text encoder's output (slots: "
                              f"{', '.join(n for n, _ in self.slots) or 'none'})")
        previous, self.fixed = self.fixed, frozenset(names)
        try:
            yield self
        finally:
            self.fixed = previous

    def gate(self, batch: int) -> torch.Tensor | None:
        """(batch, slots) 0/1, or None when no slot acts."""
        if self.rows is not None:
            if len(self.rows) != batch:
                raise GovlabError(f"routing: the denoiser saw a batch of {batch} text states, the governed step "
                                  f"has {len(self.rows)} samples (one forward per step, the batch as begin() "
                                  "returned it)")
            return self.rows if bool(self.rows.any()) else None
        if not self.fixed:
            return None
        return torch.tensor([[float(n in self.fixed) for n, _ in self.slots]]).expand(batch, -1)


TEXT_STATES = "text_states"  # the bank's name: slots on the text encoder's output, as the denoiser reads it


def expand_text_states(model: nn.Module, denoiser: nn.Module, dim: int, slots: list[tuple[str, int, str]],
                       argument: str = "encoder_hidden_states") -> RecordGate:
    """Slots ``[(name, rank, band), ...]`` on the text encoder's output as ``denoiser`` reads it (its
    ``argument``, ``(B, L, dim)``): a forward pre-hook of the denoiser adds the slots that the
    returned ``RecordGate`` switches on, per sample. Any text encoder: the slots see only its hidden
    states. The bank lives in ``model.slots`` (routed like any slot)."""
    params = list(inspect.signature(denoiser.forward).parameters)
    if argument not in params:
        raise GovlabError(f"routing: {type(denoiser).__name__}.forward takes no {argument!r}, so slots cannot act "
                          "on the text encoder's output")
    position = params.index(argument)
    if not hasattr(model, SLOTS_ATTR):
        setattr(model, SLOTS_ATTR, nn.ModuleDict())
    like = next(denoiser.parameters())
    bank = SlotBank(TEXT_STATES, nn.Linear(dim, dim, bias=False, device=like.device, dtype=like.dtype), slots)
    getattr(model, SLOTS_ATTR)[_key(TEXT_STATES)] = bank
    gate = bank.gate = RecordGate(bank.slots)

    def add_slots(module, args, kwargs):
        given = argument in kwargs
        states = kwargs.get(argument) if given else (args[position] if len(args) > position else None)
        if not isinstance(states, torch.Tensor) or states.dim() != 3 or states.shape[-1] != dim:
            got = tuple(states.shape) if isinstance(states, torch.Tensor) else repr(states)
            raise GovlabError(f"routing: {type(module).__name__} was called without {argument} of shape (batch, "
                              f"tokens, {dim}) (got {got}); the per-source slots act on the text encoder's "
                              "hidden states")
        on = gate.gate(states.shape[0])
        if on is None:
            return None
        states = states + bank(states, on.to(states.device, states.dtype))
        if given:
            return args, {**kwargs, argument: states}
        return (*args[:position], states, *args[position + 1:]), kwargs

    denoiser.register_forward_pre_hook(add_slots, with_kwargs=True)
    return gate


def restore(model: nn.Module, expansions: dict) -> None:
    """Re-attach the slots recorded in a saved model's metadata (before loading its weights)."""
    expand(model, {t: [tuple(s) for s in v] for t, v in expansions.get("slot_banks", {}).items()})
    if "caption_slots" in expansions:
        c = expansions["caption_slots"]
        expand_caption(model, [tuple(x) for x in c["slots"]], c["phrases"], private=c["private"])


def slot_names(model: nn.Module) -> list[str]:
    out = []
    for bank in banks(model):
        out += [n for n in bank.names if n not in out]
    return out


def acting_slots(model: nn.Module, tokens: torch.Tensor) -> set[str]:
    """The slots that can change the model's output for captions ``tokens``: every slot of a bank
    without triggers, and the slots of a triggered bank whose phrases one of the captions holds."""
    out = set()
    for bank in banks(model):
        if bank.triggers is None:
            out.update(bank.names)
        else:
            named = bank.triggers.find(tokens)[0].any(0).tolist()
            out.update(n for n, on in zip(bank.names, named) if on)
    return out


@torch.no_grad()
def scale_slot(model: nn.Module, name: str, factor: float) -> int:
    """Multiply slot ``name``'s output by ``factor`` in every bank (0 removes it); returns the
    number of layers changed."""
    n = 0
    for bank in banks(model):
        if name in bank.names:
            bank.up[_key(name)].mul_(factor)
            n += 1
    if n == 0:
        raise GovlabError(f"no slot {name!r} in this model (slots: {', '.join(slot_names(model)) or 'none'})")
    return n


def plan_slots(model: nn.Module, band_of: dict[str, str], *, style_band: str | None, sources: list[str],
               slot_rank: int, sequestered: list[str], sequester_rank: int,
               sequester_targets: tuple[str, ...]) -> dict[str, list[tuple[str, int, str]]]:
    """Which layers get which slots: per-source slots beside every Linear/Conv2d of the style band
    and one adapter per sequestered category beside each layer matching ``sequester_targets``; none
    for ``caption`` (see ``expand_caption``)."""
    from govlab.routing.bands import matches

    plan: dict[str, list] = {}
    layers = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)
              and not n.startswith(SLOTS_ATTR + ".")]
    if slot_rank and sources and style_band != CAPTION:
        style_layers = [n for n, m in layers if band_of.get(f"{n}.weight") == style_band]
        if not style_layers:
            raise GovlabError(f"routing: style band {style_band!r} holds no Linear or Conv2d layer for slots")
        for n in style_layers:
            plan.setdefault(n, []).extend((s, slot_rank, slot_band(s)) for s in sources)
    targets = [t for t in sequester_targets if t != CAPTION]
    if sequestered and targets:
        for pattern in targets:
            if not any(matches(f"{n}.weight", pattern) for n, _ in layers):
                raise GovlabError(f"routing: sequester target {pattern!r} matches no Linear or Conv2d layer")
        for n, _ in layers:
            if any(matches(f"{n}.weight", p) for p in targets):
                plan.setdefault(n, []).extend((c, sequester_rank, c) for c in sequestered)
    return plan
