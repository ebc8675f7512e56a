"""The index writer: a training hook that records which source (or sample) changed which band.

Per step and per group (a source, or one sample), the group's share of the gradient is the gradient
of its part of the batch loss, ``sum_{i in group} w_i l_i / B`` (the shares sum to the gradient the
optimizer sees, routing included). Per band the writer accumulates its squared norm
(``grad_norm_sq``) and its inner product with the update the optimizer actually applied
(``update_share``: the shares of a band sum to ``<g, delta>``), and counts ``steps_seen``. At each
checkpoint the sums of the interval since the previous checkpoint are flushed to ``index.nc``
(per source), or to one file per checkpoint under ``index.parts/`` (per sample).
The shares come from the step's own backward (``govlab.provenance.layers``), routing on or off;
for a model that path does not support (a layer type the hooks do not cover, or UNet slots with
triggers), from one extra backward per group in the batch (exact, slower). A per-sample index
also counts ``source_steps_seen``: the steps each source took part in.

Sampled mode (the default) computes the shares on the first ``exact_first`` steps and then only on
a seeded random subset of steps: step ``t`` with probability ``p_t`` (1 for the first steps, then
``sample_rate``), independently. Every step records the exact counts (``steps_seen``,
``samples_seen``), each group's loss weight (the sum of its rows' loss weights, ``loss_weight``)
and, per band, the squared norm ``G_t`` of the gradient the optimizer applies to the band's few
largest tensors (``probes``; cheap: the summed gradient, not the groups' shares). A group's control variate in a band is ``a_t = x_t / X_t * G_t``,
its share ``x_t / X_t`` of the step's loss weight times the band's squared norm, which follows the
step-to-step swings of the gradient's size that the groups' figures share. A figure ``y_t`` of a
computed step enters as ``(y_t - b_t a_t) / p_t`` and every step adds ``b_t a_t`` (Horvitz-Thompson
with a control variate), where ``b_t`` is the ratio of the group's computed ``y`` to its ``a`` over
the steps before ``t``, older steps decayed by ``DECAY`` each: any ``a_t`` and ``b_t`` fixed before
step ``t`` is drawn leave the estimate unbiased, since the index does not change the training.
The variance of the total is estimated by the sum over computed steps of
``(1 - p_t) / p_t^2 (y_t - b_t a_t)^2`` (unbiased), or, where larger, by a model-based estimate
that counts every step (``_finish_variance``); ``*_se`` is its root, and ``steps_drawn`` counts the
randomly drawn steps, the degrees of freedom of its interval.
Under several ranks (``govlab.distributed``) each rank computes the shares of its slice of the batch;
they are summed across ranks per group (one all-reduce of groups x parameters) before any figure is
taken, and each parameter's gradient is set to the sum of the reduced shares (in place of DDP's
all-reduce on those steps), so every rank accumulates the figures of the global batch and rank 0
writes the one index. The batch's rows and loss weights are gathered at every step for the counts.

A group whose rows all carry loss weight 0 in a step (none in the batch, or zero-weighted by an
opt-out) has ``y_t = x_t = 0`` exactly, so its estimate and standard error are exactly 0 over any
interval of such steps, sampled or not.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import govlab
from govlab import distributed
from govlab.errors import GovlabError
from govlab.hooks import Hook
from govlab.io import atomic_path, sha256_json
from govlab.provenance.config import ProvenanceConfig
from govlab.provenance.layers import LayerShares, supported
from govlab.routing.bands import assign, make_bands

INDEX = "index.nc"
PARTS = "index.parts"  # per-sample granularity: one file per checkpoint
FORMAT = "govlab-provenance-1"
FIGURES = ("grad_norm_sq", "update_share", "steps_seen", "samples_seen")  # accumulated per row
SHARES = ("grad_norm_sq", "update_share")  # the figures from the per-group shares (estimated when sampled)
ESTIMATOR = ("Horvitz-Thompson over independently sampled steps, with a control variate per group and "
             "band: the group's share of the step's loss weight times the band's squared gradient norm "
             "(decayed ratio of the earlier computed steps)")
PROBE_SHARE, PROBE_MOST = 0.5, 4  # the control variate's probe parameters per band (``probes``)
DECAY = 0.9  # weight of the control variate's ratio's older steps, per computed step


def inclusion(cfg: ProvenanceConfig, step: int) -> float:
    """The probability that a sampled writer computes the shares at ``step``."""
    return 1.0 if step < cfg.exact_first else cfg.sample_rate


def step_sampled(cfg: ProvenanceConfig, step: int) -> bool:
    """Whether a sampled writer computes the exact shares at ``step``: an independent draw with
    probability ``inclusion(cfg, step)`` from a generator seeded by ``(sample_seed, step)`` (a
    resumed run draws the same steps)."""
    rate = inclusion(cfg, step)
    return rate >= 1.0 or bool(np.random.default_rng((cfg.sample_seed, step)).random() < rate)


def model_hash(model: torch.nn.Module) -> str:
    """Hash of the model's structure (parameter names and shapes): which index fits which model."""
    return sha256_json(sorted((k, list(v.shape)) for k, v in model.state_dict().items()))[:16]


def band_of_params(model: torch.nn.Module, routing_cfg) -> dict[str, str]:
    """Band of every trainable parameter: the routing config's bands, slot bands, else ``trunk``."""
    from govlab.routing.hook import slot_bands
    from govlab.routing.slots import SLOTS_ATTR

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    base = [n for n in names if not n.startswith(SLOTS_ATTR + ".")]
    out = assign(base, make_bands(routing_cfg.bands, model))
    out.update({n: b for n, b in slot_bands(model).items() if n in names})
    return out


def probes(params: list, band: list[int], share: float = PROBE_SHARE, most: int = PROBE_MOST) -> list[int]:
    """The parameters whose gradient norm stands for their band's in the sampled mode's control
    variate: per band, its largest tensors until they hold ``share`` of the band's elements (at most
    ``most``). The control variate only needs to follow the band's gradient size from step to step
    (its ratio absorbs the scale); a few large tensors do, and norming them costs a handful of
    calls instead of one per tensor (on the CPU, per-call overhead dominates a small model's norm)."""
    out = []
    for b in sorted(set(band)):
        mine = sorted((i for i, x in enumerate(band) if x == b), key=lambda i: -params[i].numel())
        total, held = sum(params[i].numel() for i in mine), 0
        for i in mine[:most]:
            out.append(i)
            held += params[i].numel()
            if held >= share * total:
                break
    return sorted(out)


def band_modules(band_of: dict[str, str]) -> dict[str, list[str]]:
    """Module names per band (the band definitions stored in the index)."""
    out: dict[str, set] = {}
    for name, band in band_of.items():
        out.setdefault(band, set()).add(name.rpartition(".")[0])
    return {b: sorted(m) for b, m in sorted(out.items())}


def group_shares(per_sample_loss, weights, groups: list, params) -> list[torch.Tensor]:
    """Each group's share of the gradient of ``mean(per_sample_loss * weights)``, flattened over
    ``params`` (a parameter that a group does not reach gets zeros). Keeps the graph for the step."""
    weighted = per_sample_loss * weights / per_sample_loss.shape[0]
    out = []
    for rows in groups:
        grads = torch.autograd.grad(weighted[rows].sum(), params, retain_graph=True, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                              for g, p in zip(grads, params)]))
    return out


# Sums over at most this many parameters are taken in float32 and added in float64: torch's CPU
# float32 norm and matrix-vector product drift over long rows (a million parameters read about
# 2e-5 low; a band of a diffusers UNet or MMDiT holds millions).
CHUNK = 1 << 15


def band_figures(shares: torch.Tensor, delta: torch.Tensor, spans: list[slice]):
    """Per group and band (``groups x bands``, float64): the squared norm of each group's share
    (``shares``: groups x flattened parameters, ordered by band) and its inner product with the
    applied update ``delta``; per band, norms and matrix-vector products of ``CHUNK``-long parts
    summed in float64."""
    norm, update = [], []
    for s in spans:
        x, d = shares[:, s], delta[s]
        whole = x.shape[1] // CHUNK * CHUNK
        parts = torch.linalg.vector_norm(x[:, :whole].reshape(len(x), whole // CHUNK, CHUNK), dim=2).double()
        norm.append(parts.pow(2).sum(1) + torch.linalg.vector_norm(x[:, whole:], dim=1).double().pow(2))
        update.append(sum((torch.mv(x[:, i:i + CHUNK], d[i:i + CHUNK]).double() for i in range(0, x.shape[1], CHUNK)),
                          x.new_zeros(len(x), dtype=torch.float64)))
    return torch.stack(norm, dim=1), torch.stack(update, dim=1)


class ProvenanceWriter(Hook):
    """Accumulates per-group, per-band gradient figures and writes the index at each checkpoint.

    ``sources``: every source of the run's data (also those rejected at ingestion, so that the
    index shows their zero rows). A hook with a ``latest_scores`` dict (dataset row -> score, e.g.
    the memorization monitor) adds ``mem_score(sample, checkpoint)``.
    """

    def __init__(self, cfg: ProvenanceConfig, sources: list[str]):
        self.cfg, self.sources = cfg, sorted(sources)
        self.sampled = cfg.mode == "sampled"
        self.history: dict[str, list] = {k: [] for k in ("checkpoint", *FIGURES, "mem_score")}
        self._pending: dict | None = None
        self._on_step: tuple[int, bool] | None = None  # (step, whether its shares are computed)
        self.layer_shares = None
        self.world_sizes: list[list[int]] = []  # [first step, ranks] of each part of the run

    # -- set-up --------------------------------------------------------------------------------
    def setup(self, records: list[dict], band_of: dict[str, str], attrs: dict) -> None:
        """Groups, bands and attributes; called by ``on_start`` (and by the benchmark directly)."""
        self.records = records
        self.bands = sorted(set(band_of.values()))
        if self.cfg.granularity == "cohort":
            unknown = sorted({r["source_id"] for r in records} - set(self.sources))
            if unknown:
                raise GovlabError(f"provenance: records of unknown source {unknown[0]!r}")
            self.names = list(self.sources)
            pos = {s: i for i, s in enumerate(self.names)}
            self.group_of_row = torch.tensor([pos[r["source_id"]] for r in records])
        else:
            self.names = list(range(len(records)))
            self.group_of_row = torch.arange(len(records))
            pos = {s: i for i, s in enumerate(self.sources)}
            self.source_of_row = torch.tensor([pos[r["source_id"]] for r in records], dtype=torch.int64)
        self.attrs = {**attrs, "mode": self.cfg.mode}
        if self.sampled:
            self.attrs.update(sample_rate=float(self.cfg.sample_rate), sample_seed=int(self.cfg.sample_seed),
                              exact_first=int(self.cfg.exact_first), estimator=ESTIMATOR)
        n, b = len(self.names), len(self.bands)
        # the control variate's sums over the run's sampled steps so far (kept across checkpoints)
        self.cv = {"aux": torch.zeros(n, b, dtype=torch.float64),
                   **{k: torch.zeros(n, b, dtype=torch.float64) for k in SHARES},
                   # per band, over the computed steps: squared residuals and squared control variates
                   **{f"{k}_{s}": torch.zeros(b, dtype=torch.float64) for k in SHARES
                      for s in ("r2", "c2", "r2_drawn", "c2_drawn")}}
        self._ratio = {k: torch.zeros(n, b, dtype=torch.float64) for k in SHARES}
        self._reset()

    def _reset(self) -> None:
        n, b = len(self.names), len(self.bands)
        self.acc = {"grad_norm_sq": torch.zeros(n, b, dtype=torch.float64),
                    "update_share": torch.zeros(n, b, dtype=torch.float64),
                    "steps_seen": torch.zeros(n, dtype=torch.int64),
                    "samples_seen": torch.zeros(n, dtype=torch.int64)}
        if self.cfg.granularity == "sample":  # steps per source: not a sum over its samples' rows
            self.acc["source_steps_seen"] = torch.zeros(len(self.sources), dtype=torch.int64)
        if self.sampled:
            self.acc.update({f"{k}_{v}": torch.zeros(n, b, dtype=torch.float64) for k in SHARES
                             for v in ("var", "model")})
            self.acc["loss_weight"] = torch.zeros(n, dtype=torch.float64)
            self.acc["steps_sampled"] = torch.zeros((), dtype=torch.int64)
            self.acc["steps_drawn"] = torch.zeros((), dtype=torch.int64)

    def on_start(self, trainer) -> None:
        model = trainer.model
        band_of = band_of_params(model, trainer.cfg.routing)
        routing = {"mode": trainer.cfg.routing.mode, "policy": trainer.cfg.routing.policy,
                   "sequestered": list(trainer.cfg.routing.sequestered)}
        router = next((h.router for h in trainer.hooks if getattr(h, "router", None) is not None),
                      None) if trainer.cfg.routing.mode == "routed" else None
        self.bind(model, trainer.dataset.records, trainer.out, band_of=band_of, router=router, hooks=trainer.hooks,
                  step=trainer.step, attrs={"config_hash": trainer.cfg.hash(), "run_name": trainer.cfg.name,
                                            "routing_policy_json": json.dumps(routing)})

    def bind(self, model: torch.nn.Module, records: list[dict], out, *, band_of: dict[str, str], router=None,
             hooks=(), step: int = 0, attrs: dict) -> None:
        """Attach to a model explicitly (any training loop; ``on_start`` does this for govlab's own):
        ``band_of`` maps every trainable parameter name to its band, ``router`` is the installed
        router when routing is on, ``hooks`` are searched for ``latest_scores`` (the monitor),
        ``attrs`` add ``config_hash``, ``run_name`` and ``routing_policy_json``; ``step`` is the
        step of a resumed state."""
        named = sorted(((n, p) for n, p in model.named_parameters() if p.requires_grad),
                       key=lambda np_: band_of[np_[0]])  # each band one contiguous span
        attrs = {"format": FORMAT, "granularity": self.cfg.granularity, "accumulation": "interval",
                 "model_hash": model_hash(model), "govlab_version": govlab.__version__,
                 "bands_json": json.dumps(band_modules(band_of)), "sources_json": json.dumps(self.sources),
                 "provenance_config_json": json.dumps(asdict(self.cfg)), **attrs}
        w = distributed.world()
        if not self.world_sizes or self.world_sizes[-1][1] != w.size:
            self.world_sizes.append([int(step), w.size])
        if any(n > 1 for _, n in self.world_sizes):
            not_reduced = sorted({t for h in hooks for t in getattr(h, "not_reduced", ())})
            attrs["distributed_json"] = json.dumps({
                "world_sizes": self.world_sizes, "backend": w.backend or "none",
                "reduced": "per-group shares summed across ranks at each computed step; rows, loss "
                           "weights and counts gathered at every step",
                "not_reduced": not_reduced})
        pending = self._pending
        self.setup(records, band_of, attrs)
        self.params = [p for _, p in named]
        self._flat_views = [p.detach().view(-1) for p in self.params]
        ends = np.cumsum([p.numel() for p in self.params]).tolist()
        self._param_spans = [slice(e - p.numel(), e) for p, e in zip(self.params, ends)]
        if getattr(self, "layer_shares", None) is not None:
            self.layer_shares.remove()
        self.router = router
        # sampled: the layer hooks are on the model only during a sampled step
        self.layer_shares = (LayerShares(model, self.params, self.router, persistent=not self.sampled)
                             if supported(model) else None)
        sizes = {b: sum(p.numel() for n, p in named if band_of[n] == b) for b in self.bands}
        ends = [int(e) for e in np.cumsum([sizes[b] for b in self.bands])]
        self.spans = [slice(e - sizes[b], e) for b, e in zip(self.bands, ends)]
        pos = {b: i for i, b in enumerate(self.bands)}
        self._param_band = torch.tensor([pos[band_of[n]] for n, _ in named], dtype=torch.int64)
        self._probes = probes(self.params, self._param_band.tolist())
        self._probe_band = self._param_band[self._probes]
        self.out = Path(out)
        self.hooks = list(hooks)
        if pending is not None:  # resumed: the saved state is that of the checkpoint at ``step``
            self.acc, cv = pending
            if cv is not None:
                # a state written before the control variate was a_t (no "aux"): its ratio starts
                # again from the next computed step (0 until then: plain Horvitz-Thompson, unbiased);
                # it keeps its residual sums (it has no "_drawn" ones yet)
                keep = cv if "aux" in cv else {k: v for k, v in cv.items() if k.endswith(("_r2", "_c2"))}
                self.cv = {**self.cv, **keep}
                self._update_ratio()
            self._pending = None
            self.on_checkpoint(None, step)

    # -- per step ------------------------------------------------------------------------------
    def computes(self, step: int) -> bool:
        """Whether the shares are computed at ``step`` (every step in exact mode)."""
        if self._on_step is None or self._on_step[0] != step:
            on = not self.sampled or step_sampled(self.cfg, step)
            self._on_step = (step, on)
        return self._on_step[1]

    def reduces_gradients(self, ctx) -> bool:
        """Under several ranks, on a step whose shares are computed: the gradient is the sum of the
        shares reduced across ranks (``_reduce``), set here, not by DDP."""
        return distributed.world().active and self.computes(ctx.step)

    def _sorts(self) -> bool:
        """With the one-backward path and routing off, the batch is sorted by group so that each
        group is a slice (views, not copies, in the backward); the per-sample loss is order-free, so
        this changes only the order of the sum (a routed batch keeps the order its routing table was
        set for)."""
        return self.layer_shares is not None and self.router is None

    def arrange(self, ctx) -> None:
        if self.computes(ctx.step) and self._sorts():
            ctx.permute(torch.argsort(self.group_of_row[ctx.indices], stable=True))

    def before_forward(self, ctx) -> None:
        if not self.computes(ctx.step):
            return
        gid = self.group_of_row[ctx.indices]
        self._ids, local, self._counts = torch.unique(gid, return_inverse=True, return_counts=True)
        self._local = local
        if self._sorts():
            ends = torch.cumsum(self._counts, 0).tolist()
            self._groups = [slice(e - n, e) for e, n in zip(ends, self._counts.tolist())]
        else:
            self._groups = [torch.nonzero(local == k).flatten() for k in range(len(self._ids))]
        if self.layer_shares is not None:
            self.layer_shares.begin(self._groups, local)

    def before_backward(self, ctx) -> None:
        # a model the one-backward path does not support: one backward per group
        if self.layer_shares is None and self.computes(ctx.step):
            self._shares = torch.stack(group_shares(ctx.per_sample_loss, ctx.weights, self._groups, self.params))

    def after_backward(self, ctx) -> None:
        if not self.computes(ctx.step):
            return
        if self.layer_shares is not None:
            self._shares = self.layer_shares.finish()
        if distributed.world().active:
            self._reduce(ctx)
        self._before = self._flat_params()

    def _reduce(self, ctx) -> None:
        """Several ranks: the global batch's shares (groups of the global batch x parameters), each
        rank's summed and divided by the ranks (each rank's loss is the mean over its slice), and
        every parameter's gradient set to their sum (None where no rank's step reached it)."""
        rows = distributed.all_gather_rows(ctx.indices.to(torch.int64))
        ids = torch.unique(self.group_of_row[rows.cpu()])
        full = self._shares.new_zeros(len(ids), self._shares.shape[1])
        full[torch.searchsorted(ids, self._ids).to(full.device)] = self._shares
        reached = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float32, device=full.device)
        full = distributed.all_reduce_sum(full).div_(distributed.world().size)
        reached = distributed.all_reduce_sum(reached) > 0
        total = full.sum(0)
        for p, span, on in zip(self.params, self._param_spans, reached.tolist()):
            p.grad = total[span].view_as(p) if on else None
        self._shares = full

    def _flat_params(self) -> torch.Tensor:
        """A copy of the parameters as one vector, in one call: the cached views follow in-place
        updates, and are rebuilt where a parameter's storage was replaced (a cast, a move)."""
        if any(v.data_ptr() != p.data_ptr() for v, p in zip(self._flat_views, self.params)):
            self._flat_views = [p.detach().view(-1) for p in self.params]
        return torch.cat(self._flat_views)

    def after_step(self, ctx) -> None:
        on = self.computes(ctx.step)
        rows, weights = ctx.indices, ctx.weights.detach()
        if distributed.world().active:  # the global batch's rows and loss weights
            rows = distributed.all_gather_rows(rows.to(torch.int64)).cpu()
            weights = distributed.all_gather_rows(weights)
        if on:
            delta = self._flat_params().sub_(self._before)
            norm_sq, update = (t.cpu() for t in band_figures(self._shares, delta, self.spans))
            self._shares = self._before = None
        gid = self.group_of_row[rows]
        ids, local, self._counts = torch.unique(gid, return_inverse=True, return_counts=True)
        self._ids = ids
        if not self.sampled:
            self.acc["grad_norm_sq"][ids] += norm_sq
            self.acc["update_share"][ids] += update
        else:
            x = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, local, weights.cpu().double())
            total = x.sum()
            aux = (x / total if total > 0 else x)[:, None] * self._band_grad_norm_sq()[None, :]
            self._estimate(ids, x, aux, (norm_sq, update) if on else None, inclusion(self.cfg, ctx.step))
        self.acc["steps_seen"][ids] += 1
        self.acc["samples_seen"][ids] += self._counts
        if "source_steps_seen" in self.acc:
            self.acc["source_steps_seen"][torch.unique(self.source_of_row[ids])] += 1

    def _band_grad_norm_sq(self) -> torch.Tensor:
        """Per band, the squared norm of the gradient the optimizer applied to the band's probe
        parameters (``probes``; float64, on the CPU; one fused norm; a parameter without a gradient
        adds 0)."""
        grads = [self.params[i].grad for i in self._probes]
        out = torch.zeros(len(self.bands), dtype=torch.float64)
        which = self._probe_band
        if any(g is None for g in grads):  # routed: a band no row of the step may change
            which = which[[i for i, g in enumerate(grads) if g is not None]]
            grads = [g for g in grads if g is not None]
        if grads:
            norms = torch.stack(torch._foreach_norm(grads)).double().cpu()
            out.index_add_(0, which, norms * norms)
        return out

    def _estimate(self, ids: torch.Tensor, x: torch.Tensor, aux: torch.Tensor, figures, p: float) -> None:
        """Sampled mode: add one step to the estimates (module docstring). ``x``: the loss weight of
        the groups ``ids``; ``aux``: their control variates ``a_t`` (groups x bands); ``figures``:
        their exact ``(grad_norm_sq, update_share)`` on a computed step, else None; ``p``: the
        step's probability of being computed."""
        acc = self.acc
        acc["loss_weight"][ids] += x
        for k in SHARES:  # every step: the control variate's part, and its model variance
            c = self._ratio[k][ids] * aux
            acc[k][ids] += c
            acc[f"{k}_model"][ids] += (1.0 - p) / p * c * c
        if figures is None:
            return
        acc["steps_sampled"] += 1
        acc["steps_drawn"] += int(p < 1.0)
        for k, y in zip(SHARES, figures):
            c = self._ratio[k][ids] * aux
            resid = y - c
            acc[k][ids] += resid / p
            acc[f"{k}_var"][ids] += (1.0 - p) / (p * p) * resid * resid
            # the ratio's misfit: over the drawn steps once there are any, else over the first,
            # exact ones (early in training, where the ratio rests on few steps and misfits most)
            for tag in ("", "_drawn") if p < 1.0 else ("",):
                self.cv[f"{k}_r2{tag}"] += (resid * resid * (c != 0)).sum(0)
                self.cv[f"{k}_c2{tag}"] += (c * c).sum(0)
        for k, v in zip(("aux", *SHARES), (aux, *figures)):
            self.cv[k].mul_(DECAY)
            self.cv[k][ids] += v
        self._update_ratio()

    def _finish_variance(self) -> None:
        """At a checkpoint: each estimate's variance is the larger of the design-based one (from its
        drawn steps) and a model-based one, which counts every step the group took part in: the
        relative residual variance of the band's drawn steps so far (of its first, exact steps
        while none is drawn) times the group's squared control variates (a group seen only on steps
        not drawn still gets an error; one with no loss weight keeps 0)."""
        for k in SHARES:
            drawn = self.cv[f"{k}_c2_drawn"] > 0
            c2 = torch.where(drawn, self.cv[f"{k}_c2_drawn"], self.cv[f"{k}_c2"])
            r2 = torch.where(drawn, self.cv[f"{k}_r2_drawn"], self.cv[f"{k}_r2"])
            rho = torch.where(c2 > 0, r2 / torch.where(c2 > 0, c2, 1.0), 0.0)
            torch.maximum(self.acc[f"{k}_var"], rho * self.acc[f"{k}_model"], out=self.acc[f"{k}_var"])

    def _update_ratio(self) -> None:
        """The control variate's ratio for the next step: sampled ``y`` over sampled ``a``."""
        a = self.cv["aux"]
        for k in SHARES:
            self._ratio[k] = torch.where(a > 0, self.cv[k] / torch.where(a > 0, a, 1.0), 0.0)

    # -- flush ---------------------------------------------------------------------------------
    def mem_scores(self) -> np.ndarray | None:
        """Latest memorization scores per dataset row (NaN where not scored), if a hook offers them."""
        for h in self.hooks:
            scores = getattr(h, "latest_scores", None)
            if isinstance(scores, dict):
                out = np.full(len(self.records), np.nan)
                for row, s in scores.items():
                    out[int(row)] = float(s)
                return out
        return None

    def on_checkpoint(self, trainer, step: int) -> None:
        mem = self.mem_scores()
        if self.sampled:
            self._finish_variance()
        if self.cfg.granularity == "cohort":
            h = self.history
            h["checkpoint"].append(step)
            for k, v in self.acc.items():
                h.setdefault(k, []).append(v.clone())
            h["mem_score"].append(torch.from_numpy(mem) if mem is not None else None)
            if distributed.is_main():  # every rank holds the same figures
                write_index(self.to_dataset(), self.out / INDEX)
        elif distributed.is_main():
            ds = self.to_dataset(checkpoints=[step], arrays={k: v[..., None] for k, v in self.acc.items()},
                                 mem=[mem])
            write_index(ds, self.out / PARTS / f"step_{step:06d}.nc")
        self._reset()

    def to_dataset(self, checkpoints=None, arrays=None, mem=None) -> xr.Dataset:
        """The index as an xarray Dataset (the cohort history by default)."""
        if checkpoints is None:
            h = self.history
            checkpoints, mem = h["checkpoint"], h["mem_score"]
            arrays = {k: torch.stack(h[k], dim=-1) if h[k] else torch.zeros(
                (*self.acc[k].shape, 0), dtype=self.acc[k].dtype) for k in self.acc}
        dim = "source" if self.cfg.granularity == "cohort" else "sample"
        names = np.array(self.names, dtype=object) if dim == "source" else np.array(self.names, dtype=np.int64)
        data = {
            "grad_norm_sq": ((dim, "band", "checkpoint"), arrays["grad_norm_sq"].numpy()),
            "update_share": ((dim, "band", "checkpoint"), arrays["update_share"].numpy()),
            "steps_seen": ((dim, "checkpoint"), arrays["steps_seen"].numpy()),
            "samples_seen": ((dim, "checkpoint"), arrays["samples_seen"].numpy()),
        }
        coords = {dim: names, "band": np.array(self.bands, dtype=object),
                  "checkpoint": np.array(checkpoints, dtype=np.int64)}
        if self.sampled:
            for k in SHARES:
                data[f"{k}_se"] = ((dim, "band", "checkpoint"), arrays[f"{k}_var"].sqrt().numpy())
            data["loss_weight"] = ((dim, "checkpoint"), arrays["loss_weight"].numpy())
            data["steps_sampled"] = (("checkpoint",), arrays["steps_sampled"].numpy())
            data["steps_drawn"] = (("checkpoint",), arrays["steps_drawn"].numpy())
        if dim == "sample":
            coords["source_id"] = ("sample", np.array([r["source_id"] for r in self.records], dtype=object))
            coords["source"] = np.array(self.sources, dtype=object)
            data["source_steps_seen"] = (("source", "checkpoint"), arrays["source_steps_seen"].numpy())
        if any(m is not None for m in mem):
            n = len(self.records)
            cols = [np.asarray(m) if m is not None else np.full(n, np.nan) for m in mem]
            data["mem_score"] = (("sample", "checkpoint"), np.stack(cols, axis=-1))
            if dim == "source":
                coords["sample"] = np.arange(n, dtype=np.int64)
        return xr.Dataset(data, coords=coords, attrs=dict(self.attrs))

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        h = self.history
        out = {"acc": dict(self.acc), "checkpoint": list(h["checkpoint"]),
               **{k: list(v) for k, v in h.items() if k not in ("checkpoint", "mem_score")},
               "mem_score": [m if m is not None else torch.zeros(0) for m in h["mem_score"]]}
        if self.sampled:
            out["cv"] = dict(self.cv)
        if self.world_sizes:
            out["world_sizes"] = [list(map(int, ws)) for ws in self.world_sizes]
        return out

    def load_state_dict(self, state: dict) -> None:
        self.history = {"checkpoint": list(state["checkpoint"]),
                        **{k: list(v) for k, v in state.items()
                           if k not in ("acc", "cv", "checkpoint", "mem_score", "world_sizes")},
                        "mem_score": [m if m.numel() else None for m in state["mem_score"]]}
        fields = FIGURES + (("source_steps_seen",) if self.cfg.granularity == "sample" else ())
        if self.sampled:
            fields += tuple(f"{k}_{v}" for k in SHARES for v in ("var", "model"))
            fields += ("loss_weight", "steps_sampled", "steps_drawn")
        missing = [f"acc[{k!r}]" for k in fields if k not in state["acc"]]
        missing += ["'cv'"] if self.sampled and "cv" not in state else []
        if missing:  # the trainer names the checkpoint and the missing field
            raise KeyError(missing[0])
        self.world_sizes = [list(ws) for ws in state.get("world_sizes", [])]
        self._pending = (dict(state["acc"]), dict(state["cv"]) if self.sampled else None)


def write_index(ds: xr.Dataset, path: Path) -> None:
    """Write an index Dataset to netCDF atomically."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
