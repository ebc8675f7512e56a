"""Governance for any diffusers training loop: one front object with lifecycle verbs.

A foreign loop (diffusers' example scripts, accelerate) keeps its model, its data and its objective;
``Governance`` attaches the three governance parts through a narrow interface:

- the **denoiser** (a diffusers ``UNet2DConditionModel`` or ``SD3Transformer2DModel``; bands are
  derived by depth from its module structure), with its text encoder, tokenizer, VAE and scheduler
  for the monitor's detectors (``DiffusersDenoiser``);
- the **dataset rows and records**: every record has ``source_id`` and ``categories`` (a ``datasets``
  imagefolder keeps them from metadata.jsonl), and each batch carries its dataset rows (``row``);
- **per-sample losses** (``loss``), the **optimizer** (``optimizer`` builds it with routing; its
  step hooks close the step) and an **output folder** (index.nc, memorization.json, events.jsonl).

Lifecycle: ``sampler`` (for the DataLoader), ``optimizer(cls, ...)``, ``begin(batch)`` before the
forward, ``loss(per_sample)``, ``checkpoint(step)`` beside ``accelerator.save_state``, ``end(step)``;
``state_dict``/``load_state_dict`` for ``accelerator.register_for_checkpointing``.

Under ``accelerate launch`` with several processes the parts reduce as under ``govlab train`` with
torchrun (``govlab.distributed``). Governance averages the gradients at the optimizer's step and
turns off the sync of the DDP that accelerate wraps the denoiser in (at its first forward): routing
leaves bands out of a shard's graph and the index freezes the denoiser on the steps where it computes
shares, while DDP's reducer expects the same parameters in every process's backward. The index sums
its per-source shares across processes and sets the averaged gradient on the steps it computes them,
routing's idle bands follow the global batch, the monitor splits its watched rows and gathers the
scores, and process 0 writes the files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from govlab import distributed
from govlab.errors import GovlabError
from govlab.hooks import EventLog, StepContext
from govlab.io import sha256_json
from govlab.memorization.config import MemorizationConfig
from govlab.memorization.detectors import Denoiser
from govlab.memorization.monitor import MemorizationMonitor
from govlab.provenance.config import ProvenanceConfig
from govlab.provenance.writer import ProvenanceWriter
from govlab.routing.bands import model_presets
from govlab.routing.config import RoutingConfig
from govlab.routing.optim import RoutedAdamW
from govlab.routing.policy import CAPTION
from govlab.routing.slots import SLOTS_ATTR, TEXT_STATES

STATE_FORMAT = "govlab-governance-1"


def foreign_routing(**overrides) -> RoutingConfig:
    """Routing for a foreign denoiser: every source with style samples owns a low-rank slot on the
    text encoder's output (the denoiser's ``encoder_hidden_states``), switched on for that source's
    samples, and a style sample's gradient reaches its own slot (and the trunk), not the shared
    bands; semantics and composition are learnt at every depth; identity and watermark are
    sequestered in adapters beside the caption key/value projections (derived for the model).
    ``slot_rank=0`` leaves the slots out (style then needs shared bands in ``policy``)."""
    policy = {"style": ["slot"], "semantics": ["outer", "middle", "cross_attention"],
              "composition": ["outer", "middle", "cross_attention"], "identity": ["identity"],
              "watermark": ["watermark"]}
    return RoutingConfig(**{"mode": "routed", "slot_rank": 4, "policy": policy, "sequester_targets": ("kv",),
                            **overrides})


def text_states_dim(denoiser: nn.Module) -> int:
    """The width of the text encoder's hidden states a diffusers denoiser reads (a UNet's
    ``cross_attention_dim``, an MMDiT's ``joint_attention_dim``)."""
    c = getattr(denoiser, "config", None)
    dim = getattr(c, "joint_attention_dim", None) or getattr(c, "cross_attention_dim", None)
    if isinstance(dim, (list, tuple)):
        dim = dim[0] if len(set(dim)) == 1 else None
    if not isinstance(dim, int):
        raise GovlabError(f"governance: {type(denoiser).__name__} states no single text width (config "
                          "cross_attention_dim or joint_attention_dim), so slots cannot act on the text "
                          "encoder's output; set routing slot_rank=0")
    return dim


def check_text_encoder(text_encoder, tokenizer, dim: int) -> None:
    """One forward of the text encoder on an empty prompt: it must return hidden states
    (``last_hidden_state``, ``(batch, tokens, dim)``), which the denoiser reads and the slots act on."""
    ids = (tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids if tokenizer is not None else torch.zeros(1, 1, dtype=torch.long))
    param = next(iter(text_encoder.parameters()), None) if isinstance(text_encoder, nn.Module) else None
    with torch.no_grad():
        out = text_encoder(ids.to(param.device) if param is not None else ids, return_dict=True)
    hidden = getattr(out, "last_hidden_state", None)
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[-1] != dim:
        got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else "none"
        raise GovlabError(f"governance: the text encoder {type(text_encoder).__name__} returns no hidden states "
                          f"(last_hidden_state) of shape (batch, tokens, {dim}) (got {got}); the denoiser reads "
                          "them and the per-source slots act on them")


@dataclass(frozen=True)
class GovernanceConfig:
    """Which parts govern the loop; a part is off when its config is None."""

    routing: RoutingConfig | None = field(default_factory=foreign_routing)
    provenance: ProvenanceConfig | None = field(default_factory=lambda: ProvenanceConfig(enabled=True, mode="exact"))
    memorization: MemorizationConfig | None = field(default_factory=lambda: MemorizationConfig(
        mode="monitor", intervention="none", every=2, start=2, watch_size=8, seeds=1, steps=2))
    name: str = "foreign"

    def hash(self) -> str:
        return sha256_json({k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v)
                            for k, v in asdict(self).items()})[:16]


# -- data --------------------------------------------------------------------------------------------
class ExcludingSampler(torch.utils.data.Sampler[int]):
    """Dataset rows in a fresh shuffled order per epoch (seeded by ``(seed, epoch)``), without the
    excluded rows (``exclude``: from the next epoch on). ``consumed(n)`` advances its resume position
    by the rows actually trained (a DataLoader fetches ahead), so that a resumed sampler yields the
    rest of the interrupted epoch, then the next epochs, exactly as an uninterrupted one. When a pass
    yielded every row of its epoch and the loop then asks for a new one, the epoch is over even if
    fewer rows were trained (a DataLoader with ``drop_last`` leaves out a last partial batch)."""

    def __init__(self, n: int, *, seed: int = 0):
        self.n, self.seed = n, seed
        self.excluded: set[int] = set()
        self.epoch, self.pos = 0, 0  # of the rows trained so far
        self._epoch_excluded: dict[int, list[int]] = {}
        self._yielded: int | None = None  # the epoch of which a pass yielded every row

    def _order(self, epoch: int) -> list[int]:
        excluded = self._epoch_excluded.setdefault(epoch, sorted(self.excluded))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        drop = set(excluded)
        return [i for i in torch.randperm(self.n, generator=g).tolist() if i not in drop]

    def __iter__(self):
        if self._yielded == self.epoch and self.pos:  # its last rows were left out (drop_last)
            self.epoch, self.pos = self.epoch + 1, 0
        epoch, start = self.epoch, self.pos
        order = self._order(epoch)
        if start >= len(order):  # the last epoch was trained to its end
            epoch, start = epoch + 1, 0
            order = self._order(epoch)
        yield from order[start:]
        self._yielded = epoch

    def __len__(self) -> int:
        return len(self._order(self.epoch)) - self.pos if self.pos < len(self._order(self.epoch)) else \
            len(self._order(self.epoch + 1))

    def consumed(self, rows: int) -> None:
        size = len(self._order(self.epoch))
        if self.pos >= size:
            self.epoch, self.pos = self.epoch + 1, 0
        self.pos += rows

    def exclude(self, rows) -> None:
        self.excluded.update(int(r) for r in rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "excluded": sorted(self.excluded),
                "epoch_excluded": {str(k): v for k, v in self._epoch_excluded.items() if k >= self.epoch}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.excluded = int(state["epoch"]), int(state["pos"]), set(state["excluded"])
        self._epoch_excluded = {int(k): list(v) for k, v in state["epoch_excluded"].items()}


def dataset_records(dataset) -> list[dict]:
    """Records (``source_id``, ``categories``, ``caption``) of a ``datasets`` Dataset, a govlab
    Dataset or a list of dicts; a record without ``source_id`` or ``categories`` is one clear error."""
    if hasattr(dataset, "records"):
        return list(dataset.records)
    if isinstance(dataset, list):
        rows = dataset
    else:
        cols = [c for c in dataset.column_names if c != "image"]
        table = dataset.select_columns(cols).to_dict()
        if "file_name" not in table and "image" in dataset.column_names:  # an imagefolder: its image paths
            from datasets import Image

            paths = [(d or {}).get("path") for d in dataset.select_columns(["image"]).cast_column(
                "image", Image(decode=False))["image"]]
            table["file_name"] = [p or f"row {i}" for i, p in enumerate(paths)]
        rows = [dict(zip(table, vals)) for vals in zip(*table.values())]
    out = []
    for i, r in enumerate(rows):
        for key in ("source_id", "categories"):
            if key not in r or r[key] is None:
                where = r.get("file_name", f"row {i}")
                raise GovlabError(f"governance: dataset record {where} has no {key!r} (metadata.jsonl needs "
                                  f"source_id and categories for every image)")
        if not isinstance(r["categories"], (list, tuple)):
            raise GovlabError(f"governance: dataset record row {i}: 'categories' must be a list, got "
                              f"{r['categories']!r}")
        out.append({**r, "categories": list(r["categories"]), "caption": r.get("caption", r.get("text", "")),
                    "file_name": r.get("file_name") or f"row {i}"})
    return out


def dataset_images(dataset, size: int) -> torch.Tensor:
    """uint8 images ``(N, 3, size, size)`` of a ``datasets`` Dataset with an ``image`` column (or a
    govlab Dataset's own), for the monitor's duplicate keys and copy detection."""
    if hasattr(dataset, "images"):
        return dataset.images
    from PIL import Image

    out = []
    for img in dataset["image"]:
        a = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC))
        out.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
    return torch.stack(out)


# -- the denoiser -------------------------------------------------------------------------------------
class Governed(nn.Module):
    """A foreign denoiser as the model governance sees: the denoiser at ``unet`` (any backbone),
    no caption encoder of govlab's (``text``: the text encoder stays outside, frozen), and the
    adapters routing adds at ``slots``."""

    def __init__(self, denoiser: nn.Module):
        super().__init__()
        self.unet = denoiser
        self.text = nn.Identity()


class DiffusersDenoiser(Denoiser):
    """A diffusers UNet or MMDiT with its CLIP text encoder, tokenizer, VAE and scheduler, as the
    detectors' ``Denoiser``: conditioning from the text encoder's hidden states (and pooled output
    for an MMDiT), the model's own target (noise, or velocity under rectified flow), latents of the
    denoiser's input shape, images decoded by the VAE."""

    def __init__(self, denoiser, text_encoder, tokenizer, scheduler, vae=None):
        self.module, self.text_encoder, self.tokenizer, self.scheduler, self.vae = (
            denoiser, text_encoder, tokenizer, scheduler, vae)
        c = denoiser.config
        self.mmdit = hasattr(denoiser, "transformer_blocks")
        self.shape = (c.in_channels, c.sample_size, c.sample_size)

    @property
    def device(self):
        return next(self.module.parameters()).device

    @torch.no_grad()
    def encode(self, prompts):
        if isinstance(prompts, torch.Tensor):
            ids = prompts
        else:
            ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
        out = self.text_encoder(ids.to(self.device), output_hidden_states=False, return_dict=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            raise GovlabError(f"governance: the text encoder {type(self.text_encoder).__name__} returns no hidden "
                              "states (last_hidden_state); the denoiser needs them as its conditioning")
        return (hidden, out.pooler_output) if self.mmdit else hidden

    def predict(self, x, t, cond):
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).expand(x.shape[0])
        if self.mmdit:
            hidden, pooled = cond
            if hidden.shape[0] != x.shape[0]:
                hidden, pooled = hidden.expand(x.shape[0], -1, -1), pooled.expand(x.shape[0], -1)
            return self.module(hidden_states=x, timestep=t, encoder_hidden_states=hidden,
                               pooled_projections=pooled).sample
        if cond.shape[0] != x.shape[0]:
            cond = cond.expand(x.shape[0], -1, -1)
        return self.module(x, t, encoder_hidden_states=cond).sample

    @torch.no_grad()
    def generate(self, prompts, *, seed: int = 0, steps: int = 8, guidance: float = 3.0):
        if self.vae is None:
            raise GovlabError("governance: generating images (the regeneration detector) needs the VAE")
        sched = type(self.scheduler).from_config(self.scheduler.config)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(len(prompts), *self.shape, generator=g).to(self.device) * getattr(sched, "init_noise_sigma", 1.0)
        cond, null = self.encode(prompts), self.encode([""] * len(prompts))
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
            c, u = self.predict(xin, t, cond), self.predict(xin, t, null)
            x = sched.step(u + guidance * (c - u), t, x).prev_sample
        vc = self.vae.config
        images = self.vae.decode(x / vc.scaling_factor + (getattr(vc, "shift_factor", None) or 0.0)).sample
        return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


# -- the front object ----------------------------------------------------------------------------------
class Governance:
    """Routing, the provenance index and the memorization monitor on a foreign training loop.

    ``denoiser``: the model the loop trains (modules may be added to it: sequestered adapters);
    ``dataset``: its training data (records with ``source_id`` and ``categories``); ``out``: the
    output folder; ``text_encoder``/``tokenizer``/``scheduler``/``vae``: for the monitor's detectors.
    """

    def __init__(self, denoiser: nn.Module, dataset, out, *, text_encoder=None, tokenizer=None, scheduler=None,
                 vae=None, config: GovernanceConfig | None = None, seed: int = 0, image_size: int | None = None):
        from govlab.routing.hook import prepare

        self.cfg = config or GovernanceConfig()
        m = self.cfg.memorization
        if m is not None and m.mode == "monitor" and m.intervention == "regularize":
            raise GovlabError("governance: memorization.intervention 'regularize' needs govlab's own trainer (it "
                              "rewrites the batch's caption tokens or noises its caption encoder); a foreign loop "
                              "takes none, attenuate, drop or deduplicate")
        self.out = Path(out)
        self.records = dataset_records(dataset)
        self.model = Governed(denoiser)
        self.sources = sorted({r["source_id"] for r in self.records})
        self.step = 0
        self.events = EventLog(self.out / "events.jsonl")
        self.sampler = ExcludingSampler(len(self.records), seed=seed)
        self.router = self.table = self.rank = self.slots = None
        r = self.cfg.routing
        if r is not None and r.mode != "off":
            if "kv" in r.sequester_targets:  # the caption key/value projections of this model
                kv = model_presets(self.model)["cross_attention"].patterns
                r = replace(r, sequester_targets=tuple(t for t in r.sequester_targets if t != "kv") + kv)
            caption = (r.slot_rank and r.style_band == CAPTION) or CAPTION in r.sequester_targets
            dim = text_states_dim(denoiser) if caption else None
            if caption and text_encoder is not None:
                check_text_encoder(text_encoder, tokenizer, dim)
            self.router = prepare(self.model, r, self.records, text_states=(denoiser, dim) if caption else None)
            container = getattr(self.model, SLOTS_ATTR, {})
            self.slots = container[TEXT_STATES].gate if TEXT_STATES in container else None
            if r.mode == "routed":
                self.router.install()
                self.table = self.router.table(self.records)
                self.rank = self.router.group_rank(self.table)
        self.monitor = None
        if self.cfg.memorization is not None and self.cfg.memorization.mode == "monitor":
            if text_encoder is None or tokenizer is None or scheduler is None:
                raise GovlabError("governance: the memorization monitor needs text_encoder, tokenizer and scheduler")
            size = image_size or (vae.config.sample_size if vae is not None else 32)
            self.monitor = MemorizationMonitor(self.cfg.memorization, records=self.records,
                                               images=dataset_images(dataset, size))
            self.denoiser = DiffusersDenoiser(denoiser, text_encoder, tokenizer, scheduler, vae)
            self.monitor.bind(self.denoiser, events=self.events, out=self.out, sampler=self.sampler)
        self.writer = None
        if self.cfg.provenance is not None and self.cfg.provenance.enabled:
            self.writer = ProvenanceWriter(self.cfg.provenance, self.sources)
            self._bind_writer()
        self.optimizers: list[torch.optim.Optimizer] = []
        self.ctx = None
        self._device = None
        self._synced: list[torch.Tensor] = []  # the gradients governance averages across processes
        self._ddp_hook = None
        check_accelerate_world()
        self.out.mkdir(parents=True, exist_ok=True)  # after every check: a refused setup writes nothing

    def _start(self) -> None:
        """At the first step (after ``accelerator.prepare`` moved the denoiser): the adapters routing
        added (outside the denoiser) moved to its device; fp16 mixed precision refused with the index on."""
        if self.writer is not None:
            from accelerate.state import AcceleratorState

            if AcceleratorState._shared_state and AcceleratorState().mixed_precision == "fp16":
                raise GovlabError("governance: mixed_precision 'fp16' (accelerate's GradScaler) with the provenance "
                                  "index on: the index sets the gradients at the optimizer's step, after the "
                                  "scaler's unscale and inf check; use mixed_precision 'bf16' or 'no'")
        param = next(self.model.unet.parameters(), None)
        self._device = param.device if param is not None else torch.device("cpu")
        for name, child in self.model.named_children():
            if name != "unet":
                child.to(self._device)
        if distributed.world().active:  # the DDP around the denoiser, found at its first forward
            self._synced = self.parameters()
            self._ddp_hook = torch.nn.modules.module.register_module_forward_pre_hook(self._ddp_sync_off)

    def _ddp_sync_off(self, module, args) -> None:
        """The DDP that wraps the denoiser leaves the gradients alone: governance averages them at
        the optimizer's step (``_before_update``), None where no process reached a parameter."""
        if isinstance(module, DistributedDataParallel) and module.module is self.model.unet:
            module.require_backward_grad_sync = False

    def _bind_writer(self) -> None:
        band_of = dict(self.router.band_of) if self.router is not None else {
            n: "trunk" for n, _ in self.model.named_parameters()}
        band_of = {n: band_of[n] for n, p in self.model.named_parameters() if p.requires_grad}
        r = self.cfg.routing
        policy = {"mode": r.mode if r else "off", "policy": r.policy if r else {},
                  "sequestered": list(r.sequestered) if r else []}
        self.writer.bind(self.model, self.records, self.out, band_of=band_of,
                         router=self.router if r is not None and r.mode == "routed" else None,
                         hooks=[self.monitor] if self.monitor else [], step=self.step,
                         attrs={"config_hash": self.cfg.hash(), "run_name": self.cfg.name,
                                "routing_policy_json": json.dumps(policy)})

    # -- lifecycle ------------------------------------------------------------------------------------
    def parameters(self):
        """Every trainable parameter: the denoiser's and the adapters routing added."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def optimizer(self, cls=torch.optim.AdamW, params=None, **kwargs) -> torch.optim.Optimizer:
        """The loop's optimizer over ``params`` (default: ``parameters()``), as ``RoutedAdamW`` when
        routing is on (``cls`` must then be AdamW); its step closes each governed step."""
        params = self.parameters() if params is None else params
        if self.router is not None and self.cfg.routing.mode == "routed":
            if cls not in (torch.optim.AdamW, RoutedAdamW):
                raise GovlabError(f"governance: routing needs AdamW (RoutedAdamW), got {cls.__name__}")
            opt = RoutedAdamW(params, router=self.router, move_unrouted=self.cfg.routing.move_unrouted, **kwargs)
        else:
            opt = cls(params, **kwargs)
        opt.register_step_pre_hook(lambda *_: self._before_update())
        opt.register_step_post_hook(lambda *_: self._after_update())
        self.optimizers.append(opt)
        return opt

    def begin(self, batch: dict) -> dict:
        """Before the forward: the batch (a dict of per-sample tensors and lists with the dataset
        ``row`` of each sample) reordered so that each band's samples are contiguous, and routing,
        the index and the monitor's interventions set for it."""
        if "row" not in batch:
            raise GovlabError("governance: the batch has no 'row' (each sample's dataset row index)")
        if self.ctx is not None and self.writer is not None and getattr(self.ctx, "per_sample_loss", None) is not None:
            raise GovlabError("governance: begin() again before optimizer.step(): gradient accumulation (several "
                              "backward passes per optimizer step) is not supported with the provenance index on "
                              "(a step's per-source shares come from its one backward); set "
                              "gradient_accumulation_steps to 1, or turn the index off "
                              "(GovernanceConfig(provenance=None))")
        if self._device is None:
            self._start()
        idx = torch.as_tensor(batch["row"]).cpu()
        # several processes (accelerate launch): each trains its shard; the sampler counts the global batch
        self.sampler.consumed(len(idx) * distributed.world().size)
        ctx = _Ctx(step=self.step, indices=idx, records=[self.records[i] for i in idx.tolist()], x0=None,
                   tokens=None, noise=None, timesteps=None, weights=torch.ones(len(idx)), trainer=None)
        if self.rank is not None:
            ctx.permute(torch.argsort(self.rank[idx], stable=True))
        if self.writer is not None:
            self.writer.arrange(ctx)
        if self.router is not None and self.rank is not None:
            self.router.route(table=self.table[ctx.indices])
        if self.slots is not None:
            self.slots.set(ctx.records)
        if self.writer is not None:
            self.writer.before_forward(ctx)
        if self.monitor is not None:
            self.monitor.before_forward(ctx)
            self.monitor.before_backward(ctx)  # attenuate: loss weights
        self.ctx = ctx
        perm = ctx.perm
        if perm is None:
            return batch
        return {k: (v[perm.to(v.device)] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == len(perm)
                    else [v[i] for i in perm.tolist()] if isinstance(v, list) and len(v) == len(perm) else v)
                for k, v in batch.items()}

    def loss(self, per_sample: torch.Tensor) -> torch.Tensor:
        """The batch loss from per-sample losses (any shape with the batch first: reduced per sample)
        with the monitor's loss weights: ``mean(l_i * w_i)``."""
        if self.ctx is None:
            raise GovlabError("governance: loss() before begin(batch)")
        if self.writer is not None and getattr(self.ctx, "per_sample_loss", None) is not None:
            raise GovlabError("governance: loss() twice in one step: with the provenance index on, a step takes "
                              "one loss and one backward (no gradient accumulation)")
        per_sample = per_sample.reshape(per_sample.shape[0], -1).mean(dim=1)
        self.ctx.weights = self.ctx.weights.to(per_sample.device, per_sample.dtype)
        self.ctx.per_sample_loss = per_sample
        if self.writer is not None:
            self.writer.before_backward(self.ctx)
        return (per_sample * self.ctx.weights).mean()

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip the step's gradient between backward and step (in place of ``accelerator.
        clip_grad_norm_``, which would find no gradient: the index's one-backward path sets them at
        the optimizer's step). The index's per-source shares are scaled with the gradient, so they
        still sum to what the optimizer applies. Returns the total norm before clipping."""
        if self.ctx is None or getattr(self.ctx, "per_sample_loss", None) is None:
            raise GovlabError("governance: clip_grad_norm_() between loss(...).backward() and optimizer.step()")
        self._before_update()
        total = torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], max_norm,
                                               norm_type)
        shares = getattr(self.writer, "_shares", None) if self.writer is not None else None
        if shares is not None:  # the factor clip_grad_norm_ applied to every gradient
            shares.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0).to(shares.dtype))
        return total

    def _before_update(self) -> None:
        """Between the step's backward and its update (once): the index's shares, and under several
        processes every gradient averaged across them (by the index on the steps it computes)."""
        ctx = self.ctx
        if ctx is None or ctx.finished:
            return
        if self._ddp_hook is not None:  # the first forward has run: DDP's sync is off if it wraps the denoiser
            self._ddp_hook.remove()
            self._ddp_hook = None
        if self.writer is not None:
            self.writer.after_backward(ctx)
        if not (self.writer is not None and self.writer.reduces_gradients(ctx)):
            distributed.average_gradients(self._synced)
        ctx.finished = True

    def _after_update(self) -> None:
        ctx, self.ctx = self.ctx, None
        if ctx is None:
            return
        if self.writer is not None:
            self.writer.after_step(ctx)
        if self.router is not None:
            self.router.clear()
        if self.slots is not None:
            self.slots.clear()
        if self.monitor is not None:
            self.monitor.after_step(ctx)
        self.step += 1

    def checkpoint(self, step: int | None = None) -> None:
        """At a checkpoint of the loop: the index interval flushed to index.nc, the monitor's file."""
        step = self.step if step is None else step
        if self.writer is not None:
            self.writer.on_checkpoint(None, step)
        if self.monitor is not None:
            self.monitor.log_interventions(self.events, step - 1)
            self.monitor.save(self.out / "memorization.json")

    def scale_slot(self, name: str, factor: float) -> int:
        """Scale slot ``name`` (a source's slot, or a sequestered category's adapter) by ``factor``
        wherever it acts; 0 removes it. Returns the number of layers changed."""
        from govlab.routing.slots import scale_slot

        return scale_slot(self.model, name, factor)

    def end(self, step: int | None = None) -> None:
        step = self.step if step is None else step
        if self.monitor is not None:
            self.monitor.finish(step)

    # -- state (accelerate's register_for_checkpointing) ------------------------------------------------
    def state_dict(self) -> dict:
        adapters = {k: v for k, v in self.model.state_dict().items() if not k.startswith("unet.")}
        return {"format": STATE_FORMAT, "config_hash": self.cfg.hash(), "step": self.step,
                "records": len(self.records), "sampler": self.sampler.state_dict(), "adapters": adapters,
                "writer": self.writer.state_dict() if self.writer else {},
                "monitor": self.monitor.state_dict() if self.monitor else {}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT:
            raise GovlabError(f"governance: the checkpoint's governance state is not {STATE_FORMAT} "
                              f"(format {state.get('format')!r}); cannot resume")
        if state["config_hash"] != self.cfg.hash() or state["records"] != len(self.records):
            raise GovlabError(f"governance: the checkpoint was written under another governance config or "
                              f"dataset (config {state['config_hash']}, records {state['records']}; this run: "
                              f"{self.cfg.hash()}, {len(self.records)}); cannot resume")
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.model.load_state_dict({**{k: v for k, v in self.model.state_dict().items() if k.startswith("unet.")},
                                    **state["adapters"]})
        if self.monitor is not None:
            self.monitor.load_state_dict(state["monitor"])
            self.monitor.applied = {}  # logged by checkpoint() after the state was saved
        if self.writer is not None:
            self.writer.load_state_dict(state["writer"])
            self._bind_writer()  # applies the resumed interval: index.nc rewritten at ``step``
        self.events.truncate_after(self.step - 1)


def check_accelerate_world() -> None:
    """Refuse processes that joined a torch.distributed group of several which accelerate runs as one
    process each: accelerate would not split the batches, and each would write as process 0."""
    w = distributed.world()
    if not w.active:
        return
    from accelerate.state import PartialState

    if PartialState._shared_state and PartialState().num_processes != w.size:
        state = PartialState()
        raise GovlabError(f"governance: this process is one of {w.size} in torch.distributed's group, but accelerate "
                          f"runs it alone (num_processes {state.num_processes}, distributed_type "
                          f"{state.distributed_type.value}), so every process would train the same rows and write "
                          "the same files. On CPUs accelerate joins the group of `accelerate launch --multi_gpu` "
                          "or torchrun only with ACCELERATE_USE_CPU=true in the environment (gloo)")


class _Ctx(StepContext):
    """A step of a foreign loop: the batch lives in the loop, so ``permute`` only composes the order."""

    perm = None
    finished = False  # the step's gradients are set (``_before_update`` ran: at clip_grad_norm_ or the step)

    def permute(self, perm: torch.Tensor) -> None:
        self.indices, self.weights = self.indices[perm], self.weights[perm]
        self.records = [self.records[i] for i in perm.tolist()]
        self.perm = perm if self.perm is None else self.perm[perm]
