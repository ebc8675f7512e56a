"""Frozen dataclass configs, presets, and their YAML form."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from govlab.data.world import WorldConfig
from govlab.errors import GovlabError
from govlab.io import sha256_json
from govlab.memorization.config import MemorizationConfig
from govlab.models.unet import ModelConfig
from govlab.presets import names as presets
from govlab.provenance.config import ProvenanceConfig
from govlab.routing.config import RoutingConfig


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loop settings."""

    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    caption_dropout: float = 0.1
    checkpoint_every: int = 200
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    device: str = "cpu"  # cpu | cuda | cuda:N (the batches are drawn on the CPU either way)

    def __post_init__(self):
        d = self.device
        if not isinstance(d, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", d, re.ASCII):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {d!r}")


@dataclass(frozen=True)
class EvalConfig:
    """How a trained model is scored against the world's ground truth."""

    per_prompt: int = 4
    steps: int = 20
    guidance: float = 3.0


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; ``data`` is a dataset folder, or None for the embedded world."""

    name: str = "demo"
    data: str | None = None
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def hash(self) -> str:
        d = self.to_dict()
        if self.memorization.mode == "off":  # the section does not act: hashes of runs from before it
            del d["memorization"]
        if self.provenance == ProvenanceConfig():  # likewise
            del d["provenance"]
        del d["train"]["device"]  # where a run trains is not what it trains (the same batches): a run
        # may resume on another device, and hashes of runs from before the setting are unchanged
        return sha256_json(d)[:16]


SECTIONS = {"world": WorldConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
            "routing": RoutingConfig, "memorization": MemorizationConfig,
            "provenance": ProvenanceConfig}


def _build(cls, values: dict, where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise GovlabError(f"{where}: unknown key {key!r} (known: {', '.join(names)})")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise GovlabError(f"{where}: {e}") from None


def from_dict(values: dict, *, base: RunConfig | None = None, where: str = "config") -> RunConfig:
    """Overlay ``values`` (possibly partial) on ``base`` (default: the defaults)."""
    if not isinstance(values, dict):
        raise GovlabError(f"{where}: expected a mapping at the top level")
    merged = (base or RunConfig()).to_dict()
    for key, value in values.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise GovlabError(f"{where}: section {key!r} must be a mapping")
            merged[key] = {**merged[key], **value}
        elif key in ("name", "data"):
            merged[key] = value
        else:
            raise GovlabError(f"{where}: unknown key {key!r} (known: name, data, {', '.join(SECTIONS)})")
    sections = {k: _build(cls, merged[k], f"{where} [{k}]") for k, cls in SECTIONS.items()}
    return RunConfig(name=str(merged["name"]), data=merged["data"], **sections)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GovlabError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GovlabError(f"{path}: not valid YAML ({e})") from None


def load_config(preset: str | None = None, config: str | Path | None = None) -> RunConfig:
    """Resolve a preset and/or a config file (the file overrides the preset)."""
    cfg = RunConfig()
    if preset is not None:
        if preset not in presets():
            raise GovlabError(f"unknown preset {preset!r} (known: {', '.join(presets())})")
        text = resources.files("govlab.presets").joinpath(f"{preset}.yaml").read_text()
        cfg = from_dict(yaml.safe_load(text), where=f"preset {preset}")
    if config is not None:
        cfg = from_dict(read_yaml(config), base=cfg, where=str(config))
    return cfg


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
