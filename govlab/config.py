"""Frozen dataclass configs, presets, and their YAML form."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from govlab.data.world import WorldConfig
from govlab.errors import GovlabError
from govlab.io import read_text, sha256_json
from govlab.memorization.config import MemorizationConfig
from govlab.models.config import ModelConfig
from govlab.presets import names as presets
from govlab.provenance.config import ProvenanceConfig
from govlab.routing.config import RoutingConfig


def _at_least(obj, **minima: int) -> None:
    for name, low in minima.items():
        if getattr(obj, name) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(obj, name)}")


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
        _at_least(self, steps=0, warmup_steps=0, threads=0, batch_size=1, checkpoint_every=1)
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.caption_dropout <= 1:
            raise ValueError(f"lr must be > 0, weight_decay >= 0 and caption_dropout in [0, 1], got "
                             f"{self.lr}, {self.weight_decay} and {self.caption_dropout}")


@dataclass(frozen=True)
class EvalConfig:
    """How a trained model is scored against the world's ground truth."""

    per_prompt: int = 4
    steps: int = 20
    guidance: float = 3.0

    def __post_init__(self):
        _at_least(self, per_prompt=1, steps=1)


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
        else:  # an exact index hashes as before the sampled mode existed
            d["provenance"] = self.provenance.hashed()
        if not self.routing.confined_sources:  # hashes of runs from before the setting are unchanged
            del d["routing"]["confined_sources"]
        for key, default in (("backbone", "unet"), ("dit_layers", 4), ("latent", False), ("vae_steps", 300)):
            if d["model"][key] == default:  # a pixel-space UNet hashes as before backbones existed
                del d["model"][key]
        del d["train"]["device"]  # where a run trains is not what it trains (the same batches): a run
        # may resume on another device, and hashes of runs from before the setting are unchanged
        if self.world.version == 1:  # runs on the original world hash as before world versions existed
            del d["world"]["version"]
        return sha256_json(d)[:16]


SECTIONS = {"world": WorldConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig,
            "routing": RoutingConfig, "memorization": MemorizationConfig,
            "provenance": ProvenanceConfig}


# every key of a world section that a run's config.yaml held before world versions existed: such a
# section (a whole world, with no version) describes the original world, version 1
LEGACY_WORLD_KEYS = {f.name for f in dataclasses.fields(WorldConfig)} - {"version"}

EXPECTED = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a mapping", tuple: "a list", type(None): "null"}


def _conform(value, typ, key: str):
    """``value`` as a field of type ``typ`` holds it (a list as a tuple; a numeric string as a float,
    as YAML 1.1 reads ``1e-3`` as a string); a value that does not fit is refused naming ``key``."""
    if isinstance(typ, types.UnionType):
        if value is None and type(None) in typ.__args__:
            return None
        for t in typ.__args__:
            try:
                return _conform(value, t, key)
            except GovlabError:
                pass
        expected = " or ".join(EXPECTED[typing.get_origin(t) or t] for t in typ.__args__)
        raise GovlabError(f"{key}: expected {expected}, got {value!r}")
    origin = typing.get_origin(typ) or typ
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise GovlabError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(typ)
        return tuple(_conform(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value))
    if origin is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if origin is float:  # an int stays an int: the config hash of existing runs is unchanged
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, origin) and (origin is bool or not isinstance(value, bool))
    if not ok:
        raise GovlabError(f"{key}: expected {EXPECTED[origin]}, got {value!r}")
    return value


def _build(cls, values: dict, where: str, section: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise GovlabError(f"{where}: {section}: unknown key {key!r} (known: {', '.join(names)})")
    kwargs = {k: _conform(v, hints[k], f"{where}: {section}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise GovlabError(f"{where}: {section}: {e}") from None


def from_dict(values: dict, *, base: RunConfig | None = None, where: str = "config") -> RunConfig:
    """Overlay ``values`` (possibly partial) on ``base`` (default: the defaults)."""
    if not isinstance(values, dict):
        raise GovlabError(f"{where}: expected a mapping at the top level")
    merged = (base or RunConfig()).to_dict()
    for key, value in values.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise GovlabError(f"{where}: section {key!r} must be a mapping")
            if key == "world" and "version" not in value and set(value) >= LEGACY_WORLD_KEYS:
                value = {**value, "version": 1}  # a run's config.yaml written before world versions
            merged[key] = {**merged[key], **value}
        elif key in ("name", "data"):
            merged[key] = value
        else:
            raise GovlabError(f"{where}: unknown key {key!r} (known: name, data, {', '.join(SECTIONS)})")
    if merged["data"] is not None and not isinstance(merged["data"], str):
        raise GovlabError(f"{where}: data: expected a folder path, got {merged['data']!r}")
    sections = {k: _build(cls, merged[k], where, k) for k, cls in SECTIONS.items()}
    return RunConfig(name=str(merged["name"]), data=merged["data"], **sections)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GovlabError(f"{path}: config file not found")
    text = read_text(path)
    try:
        return yaml.safe_load(text) or {}
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
