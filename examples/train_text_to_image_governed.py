"""Fine-tune a text-to-image diffusion model with diffusers and accelerate, governed by govlab.

In the shape of diffusers' own ``examples/text_to_image/train_text_to_image.py``: a pipeline folder
loaded with ``from_pretrained`` (a UNet with DDPM, epsilon target; or an SD3-style MMDiT with
rectified flow, velocity target), a ``datasets`` imagefolder with metadata.jsonl (``text`` or
``caption`` column), AdamW, checkpoints with ``accelerator.save_state``. Needs no torchvision.
``train_text_to_image_governed.py`` is this script with governance added.

    python examples/train_text_to_image.py --pretrained_model_name_or_path PIPELINE \
        --train_data_dir IMAGEFOLDER --output_dir OUT --max_train_steps 100
"""

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
import govlab
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from datasets import load_dataset
from diffusers import (AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       UNet2DConditionModel)
from diffusers.optimization import get_scheduler
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Fine-tune a text-to-image diffusion model.")
    p.add_argument("--pretrained_model_name_or_path", required=True)
    p.add_argument("--train_data_dir", required=True, help="an imagefolder with metadata.jsonl")
    p.add_argument("--caption_column", default="caption")
    p.add_argument("--output_dir", default="sd-model-finetuned")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--train_batch_size", type=int, default=4)
    p.add_argument("--max_train_steps", type=int, default=100)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2)
    p.add_argument("--lr_scheduler", default="constant")
    p.add_argument("--lr_warmup_steps", type=int, default=0)
    p.add_argument("--checkpointing_steps", type=int, default=50)
    p.add_argument("--resume_from_checkpoint", default=None, help='a checkpoint folder, or "latest"')
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def to_pixels(image, size):
    """A PIL image as a (3, size, size) tensor in [-1, 1] (resize and center crop, no torchvision)."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                         Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    a = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1)


def latest_checkpoint(output_dir):
    found = [d for d in os.listdir(output_dir) if d.startswith("checkpoint-")] if os.path.isdir(output_dir) else []
    return os.path.join(output_dir, max(found, key=lambda d: int(d.split("-")[1]))) if found else None


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(project_config=ProjectConfiguration(project_dir=args.output_dir))
    set_seed(args.seed)
    path = args.pretrained_model_name_or_path
    tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    mmdit = os.path.isdir(os.path.join(path, "transformer"))
    if mmdit:
        denoiser = SD3Transformer2DModel.from_pretrained(path, subfolder="transformer")
        noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    else:
        denoiser = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
        noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    vae.to(accelerator.device)
    text_encoder.to(accelerator.device)
    denoiser.train()

    dataset = load_dataset("imagefolder", data_dir=args.train_data_dir, split="train")
    dataset = dataset.add_column("row", list(range(len(dataset))))

    def preprocess(examples):
        ids = tokenizer(examples[args.caption_column], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return {"pixel_values": [to_pixels(im, args.resolution) for im in examples["image"]], "input_ids": ids,
                "row": examples["row"]}

    train_dataset = dataset.with_transform(preprocess)

    def collate_fn(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "input_ids": torch.stack([e["input_ids"] for e in examples]),
                "row": torch.tensor([e["row"] for e in examples])}

    gov = govlab.Governance(denoiser, dataset, args.output_dir, text_encoder=text_encoder, tokenizer=tokenizer,
                            vae=vae, scheduler=noise_scheduler, seed=args.seed)
    optimizer = gov.optimizer(torch.optim.AdamW, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    train_dataloader = torch.utils.data.DataLoader(train_dataset, sampler=gov.sampler, collate_fn=collate_fn,
                                                   batch_size=args.train_batch_size, drop_last=True)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_train_steps)
    denoiser, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        denoiser, optimizer, train_dataloader, lr_scheduler)
    accelerator.register_for_checkpointing(gov)

    global_step = 0
    if args.resume_from_checkpoint:
        ckpt = (latest_checkpoint(args.output_dir) if args.resume_from_checkpoint == "latest"
                else args.resume_from_checkpoint)
        accelerator.load_state(ckpt)
        global_step = int(os.path.basename(ckpt.rstrip("/")).split("-")[1])

    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process)
    while global_step < args.max_train_steps:
        for batch in train_dataloader:
            batch = gov.begin(batch)
            # per-step draws from (seed, step): a resumed run draws what an uninterrupted one did
            gen = torch.Generator().manual_seed(args.seed * 1_000_003 + global_step)
            with torch.no_grad():
                latents = vae.encode(batch["pixel_values"]).latent_dist.sample(gen) * vae.config.scaling_factor
                encoded = text_encoder(batch["input_ids"], return_dict=True)
            noise = torch.randn(latents.shape, generator=gen).to(latents.device)
            bsz = latents.shape[0]
            if mmdit:  # rectified flow: x_t = (1 - s) x0 + s noise, target the velocity noise - x0
                u = torch.rand(bsz, generator=gen)
                idx = (u * noise_scheduler.config.num_train_timesteps).long()
                timesteps = noise_scheduler.timesteps[idx].to(latents.device)
                sigmas = noise_scheduler.sigmas[idx].to(latents.device).view(-1, 1, 1, 1)
                noisy = (1.0 - sigmas) * latents + sigmas * noise
                target = noise - latents
                model_pred = denoiser(hidden_states=noisy, timestep=timesteps,
                                      encoder_hidden_states=encoded.last_hidden_state,
                                      pooled_projections=encoded.pooler_output).sample
            else:  # DDPM: target the noise (epsilon prediction)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,),
                                          generator=gen).to(latents.device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                target = noise
                model_pred = denoiser(noisy, timesteps, encoder_hidden_states=encoded.last_hidden_state).sample
            loss = gov.loss(F.mse_loss(model_pred.float(), target.float(), reduction="none"))
            accelerator.backward(loss)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
                accelerator.save_state(os.path.join(args.output_dir, f"checkpoint-{global_step}"))
                gov.checkpoint(global_step)
            if global_step >= args.max_train_steps:
                break
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(denoiser).save_pretrained(os.path.join(args.output_dir, "denoiser"))
    accelerator.end_training()


if __name__ == "__main__":
    main()
