"""A model zoo with known lineage: bases trained from scratch, fine-tunes of some, an outsider.

Bases differ in seed, width, architecture and data mixture. Fine-tunes cover the paper's
scenarios: full fine-tune on a new distribution and on the original one, LoRA (peft), repeated
fine-tunes, a lower learning rate; the outsider (and a fine-tune of it) must come out NULL.
Layout: ``DIR/pool/<base>/`` and ``DIR/targets/<name>/`` (govlab run directories) and
``DIR/zoo.json``, written last. A repeated build keeps each finished model whose recipe, its
ancestors' recipes, its parent's weights and the world version are unchanged (``recipe.json``), and
redoes the others (from an emptied directory).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from peft import LoraConfig, get_peft_model

from govlab.config import from_dict
from govlab.data.cache import cache_dir, run_dataset
from govlab.data.world import WORLD_VERSION
from govlab.errors import GovlabError
from govlab.io import sha256_file, sha256_json, write_json
from govlab.models.diffusion import TextToImage
from govlab.sweep import Job, Sweep
from govlab.train import Trainer

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is made: ``config`` overrides a RunConfig; fine-tunes start from ``parent``."""

    name: str
    role: str  # base | outsider | fine-tune
    config: dict
    parent: str | None = None
    rounds: tuple[dict, ...] = ()  # fine-tunes: one config overlay per round, applied in turn
    lora_rank: int = 0  # 0: full fine-tune
    note: str = ""


@dataclass(frozen=True)
class ZooModel:
    name: str
    role: str
    path: str
    expected: str | None  # the true base in the pool, or None (NULL)
    parent: str | None = None
    note: str = ""


@dataclass
class Zoo:
    root: Path
    models: list[ZooModel] = field(default_factory=list)

    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"

    @property
    def bases(self) -> list[ZooModel]:
        return [m for m in self.models if m.role == "base"]

    @property
    def targets(self) -> list[ZooModel]:
        return [m for m in self.models if m.role != "base"]

    def get(self, name: str) -> ZooModel:
        for m in self.models:
            if m.name == name:
                return m
        raise GovlabError(f"no model {name!r} in the zoo at {self.root}")

    @classmethod
    def open(cls, root: str | Path) -> "Zoo":
        root = Path(root)
        manifest = root / "zoo.json"
        if not manifest.is_file():
            raise GovlabError(f"{root}: not a built zoo (no zoo.json)")
        data = json.loads(manifest.read_text())
        return cls(root, [ZooModel(**m) for m in data["models"]])


def recipes(*, quick: bool = True) -> list[Recipe]:
    """The zoo's recipes; quick: smoke-sized models for CPU tests, else demo-sized."""
    if quick:
        arch = {"channels": [16, 32, 32], "attention": [False, False, True], "text_dim": 32,
                "text_layers": 1, "head_dim": 8}
        world = {"per_artist": 24, "n_stock": 16, "per_person": 6, "dup_groups": 2, "dup_copies": 6}
        steps, ft_steps, per_artist_ft = 600, 60, 60
    else:
        arch = {"channels": [32, 64, 64], "attention": [False, True, True], "text_dim": 64, "text_layers": 2}
        world = {"per_artist": 150, "n_stock": 120, "per_person": 40, "dup_groups": 8, "dup_copies": 25}
        steps, ft_steps, per_artist_ft = 2000, 400, 300
    train = {"steps": steps, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20, "checkpoint_every": steps,
             "threads": 1}

    def base(name, seed, *, model=None, world_over=None, role="base", note=""):
        cfg = {"name": name, "model": {**arch, **(model or {})}, "world": {**world, **(world_over or {})},
               "train": {**train, "seed": seed}}
        return Recipe(name, role, cfg, note=note)

    def new_world(seed, **over):
        return {"seed": seed, "n_artists": 2, "per_artist": per_artist_ft, "n_stock": per_artist_ft // 2,
                "per_person": 0, "dup_groups": 0, "dup_copies": 0, **over}

    def tune(name, parent, worlds, *, lr=3e-4, steps=ft_steps, lora_rank=0, note=""):
        rounds = tuple({"world": w, "train": {"steps": steps, "lr": lr, "warmup_steps": 5,
                                              "checkpoint_every": steps}} for w in worlds)
        return Recipe(name, "fine-tune", {}, parent=parent, rounds=rounds, lora_rank=lora_rank, note=note)

    wide = [c + c // 2 for c in arch["channels"]]
    text = {"text_dim": arch["text_dim"] + arch["text_dim"] // 2, "text_layers": arch["text_layers"] + 1}
    more_stock = {"seed": 1, "n_artists": 4, "n_stock": 2 * world["n_stock"]}
    return [
        base("base_a", 0, note="reference recipe"),
        base("base_b", 1, note="seed only"),
        base("base_c", 2, model={"channels": wide}, note="1.5x wider UNet"),
        base("base_d", 3, model=text, note="larger caption encoder"),
        base("base_e", 4, world_over=more_stock, note="data mixture: 4 artists, twice the stock"),
        base("base_f", 5, world_over={"seed": 2, "n_stock": 0, "per_person": 2 * world["per_person"]},
             note="data mixture: no stock, twice the persons"),
        base("outsider", 6, model=text, world_over={"seed": 3}, role="outsider",
             note="from scratch, not in the pool"),
        tune("a_full_new", "base_a", [new_world(10)], note="full fine-tune, new distribution"),
        tune("b_lora", "base_b", [new_world(11)], lr=1e-3, steps=2 * ft_steps, lora_rank=4,
             note="LoRA r=4 (peft), new distribution"),
        tune("c_twice", "base_c", [new_world(12), new_world(13, n_artists=3)],
             note="fine-tuned twice, new data each round"),
        tune("d_low_lr", "base_d", [new_world(14)], lr=1e-4, note="full fine-tune, 3x lower lr"),
        tune("e_same", "base_e", [{**world, **more_stock, "seed": 15}],
             note="full fine-tune, original distribution"),
        tune("outsider_ft", "outsider", [new_world(16)], note="fine-tune of the outsider"),
    ]


def build_zoo(out: str | Path, *, quick: bool = True, progress: bool = True, poll_s: float = 1.0,
              sweep: Sweep | None = None) -> Zoo:
    """Train every recipe into ``out`` (skipping finished ones) and write ``zoo.json``.

    The models are trained as sweeps (``govlab.sweep``: on local Ray, a Ray cluster, or serially; by
    default ``Sweep()``), in rounds: every model whose parent is finished (the bases first). Processes
    may build the same zoo at once and share the work: each model is trained under its own lock, a
    job passes over a model another process holds (or whose parent is unfinished) and a later round
    comes back to it, polling every ``poll_s`` seconds while nothing else is left.
    """
    out = Path(out)
    todo = recipes(quick=quick)
    by_name = {r.name: r for r in todo}
    sweep = sweep or Sweep()
    pending = list(todo)
    while pending:
        ready = [r for r in pending if r.parent is None or _done(out, by_name[r.parent], by_name)]
        jobs = [Job(build_zoo_model, (str(out), quick, r.name), {"zoo": str(out), "model": r.name, "quick": quick},
                    cached=lambda r=r: _done(out, r, by_name)) for r in ready]
        finished = [r for r, ok in zip(ready, sweep.run(jobs, desc=f"zoo ({len(todo) - len(pending)}/{len(todo)} "
                                                                  "done)", progress=progress)) if ok]
        pending = [r for r in pending if r not in finished]
        if pending and not finished:
            time.sleep(poll_s)
    models = [ZooModel(r.name, r.role, str(_where(out, r).relative_to(out)), _expected(r, by_name), r.parent, r.note)
              for r in todo]
    write_json(out / "zoo.json", {"quick": quick, "models": [asdict(m) for m in models]})
    return Zoo.open(out)


def build_zoo_model(out: str, quick: bool, name: str) -> bool:
    """Train the zoo model ``name`` into the zoo at ``out`` unless it is finished (a sweep job); False
    when another process holds it (it is training it)."""
    out = Path(out)
    by_name = {r.name: r for r in recipes(quick=quick)}
    r = by_name[name]
    path = _where(out, r)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(f"{path}.lock", timeout=0):
            if not _done(out, r, by_name):
                shutil.rmtree(path, ignore_errors=True)  # no stale stamp, weights or checkpoints
                if r.parent is None:
                    _train_scratch(r, path)
                else:
                    _fine_tune(r, by_name[r.parent], _where(out, by_name[r.parent]), path)
                write_json(path / "recipe.json", _stamp(out, r, by_name))
    except Timeout:  # another process is training it
        return False
    return True


def _where(out: Path, r: Recipe) -> Path:
    return out / ("pool" if r.role == "base" else "targets") / r.name


def _stamp(out: Path, r: Recipe, by_name: dict[str, Recipe]) -> dict:
    return recipe_stamp(r, by_name, _where(out, by_name[r.parent]) if r.parent is not None else None)


def _done(out: Path, r: Recipe, by_name: dict[str, Recipe]) -> bool:
    path = _where(out, r) / "recipe.json"
    return path.is_file() and json.loads(path.read_text()) == _stamp(out, r, by_name)


def cached_zoo(*, quick: bool = True, progress: bool = False, sweep: Sweep | None = None) -> Zoo:
    """The zoo built once under the govlab cache, keyed by its recipes (processes asking for it at
    the same time share the training; ``sweep`` trains it: ``build_zoo``)."""
    # "stamp": the format of recipe.json (``recipe_stamp``); caches of an older format are not reused
    key = sha256_json({"world": WORLD_VERSION, "recipes": [asdict(r) for r in recipes(quick=quick)],
                       "stamp": "lineage+parent_weights"})[:16]
    root = cache_dir("zoo", key)
    if not (root / "zoo.json").is_file():
        build_zoo(root, quick=quick, progress=progress, sweep=sweep)
    return Zoo.open(root)


def recipe_stamp(r: Recipe, by_name: dict[str, Recipe], parent_dir: Path | None = None) -> dict:
    """What a finished model's ``recipe.json`` holds: the world version, the recipes of the model
    and of each of its ancestors, and the sha256 of its parent's weights (in ``parent_dir``), so
    that a parent whose recipe changed, or that was trained again, has its fine-tunes redone."""
    lineage = [asdict(r)]
    while r.parent is not None:
        r = by_name[r.parent]
        lineage.append(asdict(r))
    weights = parent_dir / "model.safetensors" if parent_dir is not None else None
    parent = sha256_file(weights) if weights is not None and weights.is_file() else None
    return json.loads(json.dumps({"world": WORLD_VERSION, "lineage": lineage, "parent_weights": parent}))


def _expected(r: Recipe, by_name: dict[str, Recipe]) -> str | None:
    while r.parent is not None:
        r = by_name[r.parent]
    return r.name if r.role == "base" else None


def _train_scratch(r: Recipe, path: Path) -> None:
    cfg = from_dict(r.config)
    Trainer(cfg, run_dataset(cfg, progress=False), path, progress=False).fit()


def _fine_tune(r: Recipe, parent: Recipe, parent_path: Path, path: Path) -> None:
    model = TextToImage.load(parent_path / "model.safetensors")
    cfg = from_dict(parent.config)
    if r.lora_rank:
        torch.manual_seed(cfg.train.seed)
        model.text.requires_grad_(False)
        model.unet = get_peft_model(model.unet, LoraConfig(
            r=r.lora_rank, lora_alpha=r.lora_rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    for i, overlay in enumerate(r.rounds):
        cfg = from_dict({**overlay, "name": r.name, "train": {**overlay["train"], "seed": 100 + i}}, base=cfg)
        Trainer(cfg, run_dataset(cfg, progress=False), path, model=model, progress=False).fit()
    if r.lora_rank:
        model.unet = model.unet.merge_and_unload()
        model.save(path / "model.safetensors")

