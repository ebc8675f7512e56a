"""The text-to-image diffusion model: a diffusers UNet, a caption encoder and diffusers schedulers."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torch.nn import functional as F

from govlab.errors import GovlabError
from govlab.io import atomic_path
from govlab.models.text import CaptionEncoder, CaptionTokenizer
from govlab.models.unet import ModelConfig, build_unet


class TextToImage(nn.Module):
    """Denoiser + caption encoder. ``forward`` returns the per-sample training loss."""

    def __init__(self, cfg: ModelConfig, tokenizer: CaptionTokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.unet = build_unet(cfg)
        self.text = CaptionEncoder(len(tokenizer.vocab), dim=cfg.text_dim, layers=cfg.text_layers,
                                   heads=cfg.text_heads, max_length=cfg.max_length)
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    def forward(self, x0: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """Per-sample epsilon-prediction MSE for images ``x0`` in [-1, 1]."""
        noisy = self.noise_scheduler.add_noise(x0, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=self.text(tokens)).sample
        return F.mse_loss(pred, noise, reduction="none").flatten(1).mean(1)

    def predict_noise(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond).sample

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (the inputs of ``encode`` and ``generate`` go there)."""
        return self.text.pos.device

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Caption embeddings of ``prompts`` on the model's device."""
        return self.text(self.tokenizer(list(prompts)).to(self.device))

    @torch.no_grad()
    def generate(self, prompts: list[str], *, seed: int = 0, steps: int = 20,
                 guidance: float = 3.0, batch_size: int = 256) -> torch.Tensor:
        """Sample one image per prompt with DPM-Solver and classifier-free guidance; uint8 (B, 3, S, S)."""
        return self._batched(prompts, seed, steps, guidance, batch_size)[0]

    @torch.no_grad()
    def guidance_gaps(self, prompts: list[str], *, seed: int = 0, steps: int = 8,
                      guidance: float = 3.0, batch_size: int = 256) -> torch.Tensor:
        """``||eps(x_t, c) - eps(x_t, null)|| / sqrt(C*H*W)`` at each step of each prompt's own guided
        sampling trajectory, ``(B, steps)``: Wen et al.'s memorization metric in its trajectory form."""
        gaps = self._batched(prompts, seed, steps, guidance, batch_size, gaps=True)[1]
        return gaps / math.sqrt(3 * self.cfg.image_size ** 2)

    def _batched(self, prompts, seed, steps, guidance, batch_size, gaps=False):
        """Images ``(B, 3, S, S)`` sampled in batches from seeded noise (drawn on the CPU: the same on
        any device) and, with ``gaps``, the per-step norms ``(B, steps)`` of the guidance term (else
        None); both on the CPU."""
        s = self.cfg.image_size
        noise = torch.randn(len(prompts), 3, s, s, generator=torch.Generator().manual_seed(seed)).to(self.device)
        was_training = self.training
        self.eval()
        images, per_step = [], []
        for i in range(0, len(prompts), batch_size):
            record = [] if gaps else None
            images.append(self._sample(prompts[i:i + batch_size], noise[i:i + batch_size], steps, guidance, record))
            if gaps:
                per_step.append(torch.stack(record, dim=1).cpu())
        self.train(was_training)
        out = torch.cat(images) if images else torch.zeros(0, 3, s, s, dtype=torch.uint8)
        if not gaps:
            return out, None
        return out, torch.cat(per_step) if per_step else torch.zeros(0, steps)

    def _sample(self, prompts, x, steps, guidance, gaps=None):
        # The cosine schedule has alpha_bar(999) ~ 2e-9: an x0 prediction there divides by ~5e-5 and
        # saturates every pixel. Start one spacing below T ("leading" + offset) and clip x0 to [-1, 1].
        sched = DPMSolverMultistepScheduler.from_config(
            self.noise_scheduler.config, timestep_spacing="leading", steps_offset=1,
            thresholding=True, sample_max_value=1.0)
        sched.set_timesteps(steps)
        ctx = torch.cat([self.encode([""] * len(prompts)), self.encode(prompts)])
        x = x * sched.init_noise_sigma
        for t in sched.timesteps:
            eps_u, eps_c = self.predict_noise(torch.cat([x, x]), t, ctx).chunk(2)
            if gaps is not None:
                gaps.append((eps_c - eps_u).flatten(1).norm(dim=1))
            x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
        return to_uint8(x).cpu()

    # -- weights -------------------------------------------------------------------------------
    def metadata(self) -> dict:
        meta = {"model_config": asdict(self.cfg), "vocab": self.tokenizer.vocab}
        if getattr(self, "expansions", None):  # modules added by governance (routing slots)
            meta["expansions"] = self.expansions
        return meta

    def save(self, path: str | Path) -> None:
        """Write weights as safetensors (atomically) with config and vocabulary in the header."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"govlab": json.dumps(self.metadata())})

    @classmethod
    def load(cls, path: str | Path) -> "TextToImage":
        path = Path(path)
        if not path.is_file():
            raise GovlabError(f"{path}: model weights not found")
        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads((f.metadata() or {})["govlab"])
            state = load_file(str(path))
            model = from_metadata(meta)
            model.load_state_dict(state)
        except (KeyError, ValueError, TypeError, OSError, RuntimeError, SafetensorError) as e:
            raise GovlabError(f"{path}: not a govlab safetensors model ({e})") from None
        return model


def from_metadata(meta: dict) -> TextToImage:
    cfg = meta["model_config"]
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    model = TextToImage(cfg, CaptionTokenizer(meta["vocab"], cfg.max_length))
    if meta.get("expansions"):
        from govlab.routing.slots import restore

        restore(model, meta["expansions"])
    return model


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 pixels."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to [-1, 1] floats."""
    return images.float() / 127.5 - 1
