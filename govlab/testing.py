"""Test helpers shipped for users: a tiny random-weight diffusers pipeline folder, written offline.

``build_tiny_pipeline(DIR, backbone="unet" | "sd3")`` writes a folder in the layout of a hub
pipeline (one subfolder per component and a ``model_index.json``) that ``from_pretrained`` loads as
it would a real one: a ``UNet2DConditionModel`` with ``DDPMScheduler`` (epsilon prediction), or an
SD3-style MMDiT ``SD3Transformer2DModel`` with ``FlowMatchEulerDiscreteScheduler`` (rectified flow,
velocity target); an ``AutoencoderKL``; a ``CLIPTextModel`` and a ``CLIPTokenizer`` whose byte-level
BPE vocabulary is written here (no download). Sizes are CPU-test sized (a few seconds a step).

For govlab's own loop: ``TINY_MODEL``, ``TINY_TRAIN``, ``TINY_EVAL`` and ``TINY_ROUTING``, config
sections that overlay a preset (``from_dict({"model": TINY_MODEL, ...}, base=load_config("smoke"))``)
to train a model in seconds; ``one_thread()`` runs torch on one thread inside (tiny models run fastest
so, and timings stay sane on a shared machine).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from govlab.errors import GovlabError
from govlab.io import write_json

BACKBONES = ("unet", "sd3")
TEXT_DIM = 32
MAX_TOKENS = 16
SPECIAL = ("<|startoftext|>", "<|endoftext|>")

# govlab's own tiny text-to-image model and a few steps of training: config sections to overlay
TINY_MODEL = {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "head_dim": 8, "norm_groups": 4}
TINY_TRAIN = {"steps": 4, "batch_size": 12, "checkpoint_every": 2, "warmup_steps": 1}
TINY_EVAL = {"per_prompt": 1, "steps": 4}
TINY_ROUTING = {"mode": "routed", "slot_rank": 2, "sequester_rank": 2}


@contextmanager
def one_thread():
    """torch on one thread inside the block, the previous number of threads restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table of printable stand-ins for the 256 byte values (byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


def write_clip_tokenizer(path: str | Path, words=()) -> None:
    """A CLIP tokenizer (vocab.json, merges.txt, configs) over every byte, with merges that make
    each of ``words`` one token; any text tokenizes (unknown words fall apart into bytes)."""
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    table = _bytes_to_unicode()
    for word in sorted({w.lower() for w in words if w}):
        parts = [table[b] for b in word.encode()]
        parts[-1] += "</w>"
        while len(parts) > 1:  # merge left to right: each merge's result is a new vocabulary entry
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            if parts[0] not in vocab:
                vocab.append(parts[0])
    vocab += list(SPECIAL)
    ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    write_json(path / "vocab.json", ids)
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in dict.fromkeys(merges)))
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=MAX_TOKENS,
                        pad_token=SPECIAL[1])
    tok.save_pretrained(str(path))


def build_tiny_pipeline(path: str | Path, backbone: str = "unet", *, seed: int = 0, words=(),
                        sample_size: int = 32) -> Path:
    """Write a tiny random-weight pipeline folder at ``path`` (created; an existing folder is
    refused) and return it. ``words``: caption words the tokenizer keeps whole."""
    from diffusers import (AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if backbone not in BACKBONES:
        raise GovlabError(f"build_tiny_pipeline: backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise GovlabError(f"{path}: exists and is not empty; refusing to write a pipeline there")
    torch.manual_seed(seed)
    write_clip_tokenizer(path / "tokenizer", words)
    tok = CLIPTokenizer.from_pretrained(str(path / "tokenizer"))
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS, projection_dim=TEXT_DIM, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    text.save_pretrained(str(path / "text_encoder"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=4, layers_per_block=1, sample_size=sample_size)
    vae.save_pretrained(str(path / "vae"))
    latent = sample_size // 2
    if backbone == "unet":
        UNet2DConditionModel(
            sample_size=latent, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=8,
        ).save_pretrained(str(path / "unet"))
        DDPMScheduler(num_train_timesteps=1000).save_pretrained(str(path / "scheduler"))
        index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                 "safety_checker": [None, None], "feature_extractor": [None, None],
                 "requires_safety_checker": False}
    else:
        SD3Transformer2DModel(
            sample_size=latent, patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16,
            pooled_projection_dim=TEXT_DIM, pos_embed_max_size=latent,
        ).save_pretrained(str(path / "transformer"))
        FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(str(path / "scheduler"))
        index = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
                 "text_encoder_2": [None, None], "tokenizer_2": [None, None], "text_encoder_3": [None, None],
                 "tokenizer_3": [None, None]}
    sched = "DDPMScheduler" if backbone == "unet" else "FlowMatchEulerDiscreteScheduler"
    import diffusers

    write_json(path / "model_index.json", {
        **index, "_diffusers_version": diffusers.__version__, "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", sched]})
    return path


def read_model_index(path: str | Path) -> dict:
    return json.loads((Path(path) / "model_index.json").read_text())


def write_tiny_imagefolder(path: str | Path, n: int = 16, *, size: int = 32, seed: int = 0) -> Path:
    """A ``datasets`` imagefolder of ``n`` records of the embedded world (images/*.png and
    metadata.jsonl with caption, source_id, categories), every category present, written at ``path``."""
    from dataclasses import replace

    import numpy as np
    from PIL import Image

    from govlab.data.world import WorldConfig, render, world_records

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise GovlabError(f"{path}: exists and is not empty; refusing to write a dataset there")
    records = world_records(replace(WorldConfig(), image_size=size, seed=seed))
    by_cat: dict[str, list[dict]] = {}
    for r in records:
        for c in r["categories"]:
            by_cat.setdefault(c, []).append(r)
    picked: dict[str, dict] = {}
    while len(picked) < n and any(by_cat.values()):  # round robin over categories
        for rs in by_cat.values():
            while rs and rs[0]["file_name"] in picked:
                rs.pop(0)
            if rs and len(picked) < n:
                r = rs.pop(0)
                picked[r["file_name"]] = r
    (path / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for r in picked.values():
        Image.fromarray(np.asarray(render(r, size))).save(path / r["file_name"])
        lines.append(json.dumps({"file_name": r["file_name"], "caption": r["caption"], "source_id": r["source_id"],
                                 "categories": r["categories"]}))
    (path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return path
