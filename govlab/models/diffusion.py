"""The text-to-image diffusion model: a diffusers denoiser (a UNet with DDPM, or an SD3-style MMDiT
with rectified flow), a caption encoder, diffusers schedulers and, for latent training, a small
frozen ``AutoencoderKL``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torch.nn import functional as F

from govlab.errors import GovlabError
from govlab.io import atomic_path
from govlab.models.text import CaptionEncoder, CaptionTokenizer
from govlab.models.unet import ModelConfig, build_denoiser, build_vae


class TextToImage(nn.Module):
    """Denoiser + caption encoder. ``forward`` returns the per-sample training loss.

    ``unet`` holds the denoiser whatever its backbone (``cfg.backbone``): a UNet trained with DDPM
    (epsilon target) or an SD3-style MMDiT trained with rectified flow (``x_t = (1 - s) x0 + s
    noise``, ``s = t / 1000``, velocity target ``noise - x0``). With ``cfg.latent`` the denoiser
    works on the latents of ``vae`` (frozen; fitted to the training images by ``fit_vae``)."""

    def __init__(self, cfg: ModelConfig, tokenizer: CaptionTokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.unet = build_denoiser(cfg)
        self.text = CaptionEncoder(len(tokenizer.vocab), dim=cfg.text_dim, layers=cfg.text_layers,
                                   heads=cfg.text_heads, max_length=cfg.max_length)
        self.flow = cfg.backbone == "dit"
        if self.flow:
            self.noise_scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        else:
            self.noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        if cfg.latent:  # its weights are buffers: saved with the model, never trained, routed or indexed
            self.vae = as_buffers(build_vae(cfg))
            self.register_buffer("latent_scale", torch.ones(()))

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        """One denoiser input ``(C, H, W)``: pixels, or VAE latents."""
        return self.cfg.noise_shape

    def to_latent(self, x0: torch.Tensor) -> torch.Tensor:
        """The denoiser's clean input for images ``x0`` in [-1, 1]: the images, or their (scaled,
        deterministic: the posterior mean) latents."""
        if not self.cfg.latent:
            return x0
        with torch.no_grad():
            return self.vae.encode(x0).latent_dist.mean * self.latent_scale

    def from_latent(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x / self.latent_scale).sample if self.cfg.latent else x

    def forward(self, x0: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor) -> torch.Tensor:
        """Per-sample MSE against the model's target (noise, or velocity) for images ``x0`` in [-1, 1]."""
        x0 = self.to_latent(x0)
        if self.flow:
            s = (timesteps.to(x0.dtype) / self.noise_scheduler.config.num_train_timesteps).view(-1, 1, 1, 1)
            noisy, target = (1 - s) * x0 + s * noise, noise - x0
        else:
            noisy, target = self.noise_scheduler.add_noise(x0, noise, timesteps), noise
        pred = self.predict_noise(noisy, timesteps, self.text(tokens))
        return F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)

    def predict_noise(self, x: torch.Tensor, t, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction of its target (noise; velocity under rectified flow)."""
        if self.flow:  # the MMDiT's pooled projection: the caption's mean over tokens
            t = torch.as_tensor(t, device=x.device).to(x.dtype).expand(x.shape[0])
            return self.unet(hidden_states=x, timestep=t, encoder_hidden_states=cond,
                             pooled_projections=cond.mean(1)).sample
        return self.unet(x, t, encoder_hidden_states=cond).sample

    def fit_vae(self, images: torch.Tensor, *, steps: int, seed: int = 0, batch_size: int = 16,
                progress: bool = True) -> float:
        """Fit the VAE to uint8 ``images`` (reconstruction MSE + a small KL term, AdamW), freeze it,
        and set the latent scale to one over the latents' standard deviation. Returns the last
        reconstruction MSE."""
        from tqdm.auto import tqdm

        x_all, g = to_float(images), torch.Generator().manual_seed(seed)
        as_parameters(self.vae).train()
        opt = torch.optim.AdamW(self.vae.parameters(), lr=2e-3)
        rec = float("nan")
        for _ in tqdm(range(steps), desc="fit vae", disable=not progress):
            x = x_all[torch.randint(0, len(x_all), (batch_size,), generator=g)]
            post = self.vae.encode(x).latent_dist
            out = self.vae.decode(post.sample(generator=g)).sample
            loss = F.mse_loss(out, x) + 1e-6 * post.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            rec = float(F.mse_loss(out.detach(), x))
        as_buffers(self.vae).eval()
        with torch.no_grad():
            z = torch.cat([self.vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
            self.latent_scale.fill_(1.0 / float(z.std()))
        return rec

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
        return gaps / math.sqrt(math.prod(self.noise_shape))

    def _batched(self, prompts, seed, steps, guidance, batch_size, gaps=False):
        """Images ``(B, 3, S, S)`` sampled in batches from seeded noise (drawn on the CPU: the same on
        any device) and, with ``gaps``, the per-step norms ``(B, steps)`` of the guidance term (else
        None); both on the CPU."""
        s = self.cfg.image_size
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(prompts), *self.noise_shape, generator=g).to(self.device)
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
        if self.flow:  # rectified flow: Euler steps of the predicted velocity from s = 1 to 0
            sched = FlowMatchEulerDiscreteScheduler.from_config(self.noise_scheduler.config)
        else:
            # The cosine schedule has alpha_bar(999) ~ 2e-9: an x0 prediction there divides by ~5e-5 and
            # saturates every pixel. Start one spacing below T ("leading" + offset) and clip x0 to [-1, 1]
            # (pixels only: latents are not bounded).
            sched = DPMSolverMultistepScheduler.from_config(
                self.noise_scheduler.config, timestep_spacing="leading", steps_offset=1,
                thresholding=not self.cfg.latent, sample_max_value=1.0)
        sched.set_timesteps(steps)
        ctx = torch.cat([self.encode([""] * len(prompts)), self.encode(prompts)])
        x = x * getattr(sched, "init_noise_sigma", 1.0)
        for t in sched.timesteps:
            eps_u, eps_c = self.predict_noise(torch.cat([x, x]), t, ctx).chunk(2)
            if gaps is not None:
                gaps.append((eps_c - eps_u).flatten(1).norm(dim=1))
            x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
        return to_uint8(self.from_latent(x)).cpu()

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


def as_buffers(module: nn.Module) -> nn.Module:
    """``module`` with every parameter turned into a buffer of the same name (in place)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            del m._parameters[name]
            m.register_buffer(name, p.detach() if p is not None else None)
    return module


def as_parameters(module: nn.Module) -> nn.Module:
    """The inverse of ``as_buffers`` for floating-point buffers (running statistics stay buffers)."""
    for m in module.modules():
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_floating_point() and not name.startswith("running_"):
                del m._buffers[name]
                m.register_parameter(name, nn.Parameter(b.clone()))
    return module


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats to uint8 pixels."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to [-1, 1] floats."""
    return images.float() / 127.5 - 1
