"""The governed training loop: one plain diffusion training step with hook points.

Governance parts (routing, memorization monitor, provenance index) are hooks; with no hooks this
is a minimal text-to-image diffusion training loop.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from govlab import distributed
from govlab.checkpoint import load_state, save_state
from govlab.config import RunConfig, to_yaml
from govlab.data.dataset import Dataset
from govlab.errors import GovlabError
from govlab.hooks import EventLog, Hook, StepContext
from govlab.io import write_text
from govlab.models.diffusion import TextToImage, to_float
from govlab.models.text import CaptionTokenizer

CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_DIR = "checkpoints"  # step_NNNNNN.safetensors: model weights at each checkpoint


class EpochSampler:
    """Shuffled batches, a fresh permutation per epoch from (seed, epoch); samples can be dropped."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if batch_size > n:
            raise GovlabError(f"batch_size {batch_size} is larger than the dataset ({n} records)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.pos, self.excluded = 0, 0, set()
        self._order = self._permutation()

    def _permutation(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.excluded:
            order = order[~torch.isin(order, torch.tensor(sorted(self.excluded)))]
        return order

    def exclude(self, indices) -> None:
        """Drop these dataset rows from the next epoch on."""
        self.excluded.update(int(i) for i in indices)

    def next_batch(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self._order):
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._permutation()
            if len(self._order) < self.batch_size:
                raise GovlabError("too few samples left for one batch after exclusions")
        batch = self._order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "excluded": sorted(self.excluded)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.excluded = state["epoch"], state["pos"], set(state["excluded"])
        self._order = self._permutation()


def build_model(cfg: RunConfig, dataset: Dataset, *, progress: bool = True) -> TextToImage:
    torch.manual_seed(cfg.train.seed)
    tokenizer = CaptionTokenizer.from_captions([r["caption"] for r in dataset.records], cfg.model.max_length)
    model = TextToImage(cfg.model, tokenizer)
    if cfg.model.latent:  # the VAE fitted to the training images, then frozen (in the weights, like the rest)
        model.fit_vae(dataset.images, steps=cfg.model.vae_steps, seed=cfg.train.seed, progress=progress)
    return model


def training_device(name: str) -> torch.device:
    """The device of ``train.device``; a CUDA device that torch cannot reach is refused."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GovlabError(f"train.device is {name!r} but torch finds no CUDA device (torch "
                          f"{torch.__version__}); use device: cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise GovlabError(f"train.device is {name!r} but torch finds {torch.cuda.device_count()} CUDA "
                          "device(s)")
    return device


class Trainer:
    """Owns the model, optimizer, data order and RNG of a run; ``fit`` runs the loop. The model (a
    given ``model`` too, in place) is moved to ``train.device``.

    Under several ranks (``torchrun``: ``govlab.distributed``), every rank draws the global batch
    and trains its slice of ``batch_size / ranks`` samples through DDP; the data order, the RNG and
    the governance state stay global (a checkpoint resumes under any number of ranks) and rank 0
    writes the files."""

    def __init__(self, cfg: RunConfig, dataset: Dataset, out: str | Path, *,
                 hooks: list[Hook] = (), model: TextToImage | None = None, progress: bool = True):
        self.cfg, self.dataset, self.out = cfg, dataset, Path(out)
        self.hooks, self.progress = list(hooks), progress
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.world = distributed.world()
        distributed.check_batch(cfg.train.batch_size, self.world)  # before anything is built
        self.data_hash = dataset.fingerprint()
        distributed.check_same(f"config {cfg.hash()}, data {self.data_hash}", "configs or data")
        self.device = distributed.rank_device(training_device(cfg.train.device))
        self.model = (model if model is not None else build_model(cfg, dataset, progress=progress)).to(self.device)
        t = cfg.train
        supplied = [opt for h in self.hooks if (opt := h.on_build(self)) is not None]
        if len(supplied) > 1:
            raise GovlabError("more than one governance hook supplies the optimizer")
        self.optimizer = supplied[0] if supplied else self.make_optimizer()
        self.lr_scheduler = get_scheduler("constant_with_warmup", self.optimizer,
                                          num_warmup_steps=t.warmup_steps)
        self.sampler = EpochSampler(len(dataset), t.batch_size, t.seed)
        self.rng = torch.Generator().manual_seed(t.seed + 1)
        self.step = 0
        self.images = to_float(dataset.images).to(self.device)
        self.tokens = self.model.tokenizer([r["caption"] for r in dataset.records]).to(self.device)
        self.null_tokens = self.model.tokenizer([""])[0].to(self.device)
        self.events = EventLog(self.out / "events.jsonl")  # rank 0 writes it
        self.ddp = distributed.wrap(self.model, self.device)  # None on one rank

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over all parameters (unless a hook supplies the optimizer in ``on_build``)."""
        t = self.cfg.train
        return torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    # -- one step ------------------------------------------------------------------------------
    def make_context(self) -> StepContext:
        """The next batch, drawn on the CPU (the same batches on any device), on the run's device;
        ``indices`` stay on the CPU."""
        idx = self.sampler.next_batch()
        b, s, dev = len(idx), self.cfg.model.image_size, self.device
        drop = torch.rand(b, generator=self.rng) < self.cfg.train.caption_dropout
        noise = torch.randn(b, *self.model.noise_shape, generator=self.rng)
        timesteps = torch.randint(0, self.model.noise_scheduler.config.num_train_timesteps, (b,),
                                  generator=self.rng)
        # several ranks: the global batch and its draws above, this rank's slice of them below
        idx, drop, noise, timesteps = (distributed.shard(t, self.world) for t in (idx, drop, noise, timesteps))
        b = len(idx)
        rows = idx.to(dev)
        tokens = self.tokens[rows].clone()
        tokens[drop.to(dev)] = self.null_tokens
        return StepContext(step=self.step, indices=idx, records=[self.dataset.records[i] for i in idx],
                           x0=self.images[rows], tokens=tokens, noise=noise.to(dev),
                           timesteps=timesteps.to(dev), weights=torch.ones(b, device=dev), trainer=self)

    def train_step(self, ctx: StepContext) -> float:
        for h in self.hooks:
            h.arrange(ctx)
        for h in self.hooks:
            h.before_forward(ctx)
        # several ranks: DDP averages the gradients, except on a step whose gradients a hook
        # averages itself (the index, from its reduced per-source shares)
        own = self.ddp is not None and any(h.reduces_gradients(ctx) for h in self.hooks)
        with self.ddp.no_sync() if own else contextlib.nullcontext():
            ctx.per_sample_loss = (self.ddp or self.model)(ctx.x0, ctx.tokens, ctx.noise, ctx.timesteps)
            for h in self.hooks:
                h.before_backward(ctx)
            ctx.loss = (ctx.per_sample_loss * ctx.weights).mean()
            ctx.loss.backward()
        if self.ddp is not None:  # the global batch's loss
            ctx.loss = distributed.all_reduce_mean(ctx.loss.detach())
        for h in self.hooks:
            h.after_backward(ctx)
        self.optimizer.step()
        self.lr_scheduler.step()
        for h in self.hooks:
            h.after_step(ctx)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return ctx.loss.item()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "step": self.step, "config_hash": self.cfg.hash(), "data_hash": self.data_hash,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(), "sampler": self.sampler.state_dict(),
            "rng": self.rng.get_state(), "hooks": [h.state_dict() for h in self.hooks],
        }

    def load_state_dict(self, state: dict) -> None:
        if state["config_hash"] != self.cfg.hash():
            raise GovlabError(f"{self.out / CHECKPOINT}: written by a different config "
                              f"({state['config_hash']} != {self.cfg.hash()}); cannot resume")
        if len(state["hooks"]) != len(self.hooks):
            raise GovlabError(f"{self.out / CHECKPOINT}: saved with {len(state['hooks'])} governance "
                              f"hooks, this run has {len(self.hooks)}; cannot resume")
        self.step = state["step"]
        for h, s in zip(self.hooks, state["hooks"]):  # first: a hook may refuse the resume, naming why
            try:
                h.load_state_dict(s)
            except KeyError as e:
                raise GovlabError(f"{self.out / CHECKPOINT}: the state of hook {type(h).__name__} lacks {e} "
                                  "(written by another govlab version?); cannot resume") from None
        if state.get("data_hash") != self.data_hash:  # after the hooks: an opt-out edit is named by its hook
            raise GovlabError(f"{self.out / CHECKPOINT}: trained on other data (records or images; data "
                              f"{state.get('data_hash')}, this run's {self.data_hash}); cannot resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.rng.set_state(state["rng"])

    def checkpoint(self) -> None:
        if self.world.main:  # every rank holds the same state
            save_state(self.out / CHECKPOINT, self.state_dict())
            # weights of every checkpoint, kept for checkpoint-based attribution (TracIn, D-TRAK)
            self.model.save(self.out / CHECKPOINT_DIR / f"step_{self.step:06d}.safetensors")
        for h in self.hooks:
            h.on_checkpoint(self, self.step)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False, until: int | None = None) -> "Trainer":
        """Train to ``cfg.train.steps`` (or ``until``), checkpointing every ``checkpoint_every`` steps."""
        if resume:  # before mkdir: an --out that is a file is named as holding no checkpoint
            self.load_state_dict(load_state(self.out / CHECKPOINT))
            self.events.truncate_after(self.step - 1)
        elif self.world.main:
            self.events.path.unlink(missing_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.world.main:
            write_text(self.out / "config.yaml", to_yaml(self.cfg))
        for h in self.hooks:
            h.on_start(self)
        end = min(until or self.cfg.train.steps, self.cfg.train.steps)
        bar = tqdm(total=end, initial=self.step, desc=f"train {self.cfg.name}",
                   disable=not (self.progress and self.world.main))
        self.model.train()
        start = time.perf_counter()
        while self.step < end:
            loss = self.train_step(self.make_context())
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % self.cfg.train.checkpoint_every == 0 or self.step == end:
                self.checkpoint()
        bar.close()
        self.seconds = time.perf_counter() - start
        if self.step == self.cfg.train.steps:
            if self.world.main:
                self.model.save(self.out / "model.safetensors")
                for h in self.hooks:  # the hooks' files: rank 0's
                    h.on_end(self)
        return self


def check_replaceable(out: Path) -> None:
    """Refuse an ``out`` that a new run may not replace: a file, or a folder that is not a run."""
    if out.exists() and not out.is_dir():
        raise GovlabError(f"{out}: exists and is not a directory; refusing to overwrite")
    if out.exists() and not (out / "config.yaml").is_file() and any(out.iterdir()):
        raise GovlabError(f"{out}: exists and is not a govlab run directory; refusing to overwrite")


def clear_run(out: Path) -> None:
    """Remove a previous run's artifacts before a fresh (non-resumed) run writes there."""
    check_replaceable(out)
    if out.exists():
        shutil.rmtree(out)
