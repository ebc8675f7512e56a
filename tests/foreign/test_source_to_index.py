"""One record's ``source_id``, followed from a metadata.jsonl to its row in index.nc through the public
API only (names in ``govlab.__all__``), in one direction: folder -> governed training -> index."""

import json

import numpy as np
import torch
import torch.nn.functional as F

import govlab


def test_a_records_source_id_reaches_its_row_in_the_index(tmp_path):
    from datasets import load_dataset
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # 1. a metadata.jsonl: pick one record and its source
    data = govlab.testing.write_tiny_imagefolder(tmp_path / "data", n=8)
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]
    source = records[0]["source_id"]
    rows_of_source = sum(r["source_id"] == source for r in records)

    # 2. a few governed steps of a diffusers loop with the index on (the README's loop, no monitor)
    pipe = govlab.testing.build_tiny_pipeline(tmp_path / "pipe")
    unet = UNet2DConditionModel.from_pretrained(pipe, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(pipe, subfolder="vae")
    text = CLIPTextModel.from_pretrained(pipe, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(pipe, subfolder="tokenizer")
    sched = DDPMScheduler.from_pretrained(pipe, subfolder="scheduler")
    dataset = load_dataset("imagefolder", data_dir=str(data), split="train")
    with govlab.testing.one_thread():
        gov = govlab.Governance(unet, dataset, tmp_path / "out", text_encoder=text, tokenizer=tok,
                                scheduler=sched, vae=vae, config=govlab.GovernanceConfig(memorization=None))
        opt = gov.optimizer(torch.optim.AdamW, lr=1e-4)
        for rows in torch.utils.data.BatchSampler(gov.sampler, batch_size=4, drop_last=True):
            batch = gov.begin({"row": torch.tensor(rows)})
            ex = [dataset[r] for r in batch["row"].tolist()]
            with torch.no_grad():
                pixels = torch.stack([torch.tensor(np.asarray(e["image"].convert("RGB")), dtype=torch.float32)
                                      .permute(2, 0, 1) / 127.5 - 1 for e in ex])
                x0 = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                ids = tok([e["caption"] for e in ex], padding="max_length", truncation=True,
                          return_tensors="pt").input_ids
                cond = text(ids)[0]
            noise, t = torch.randn_like(x0), torch.randint(0, 1000, (len(ex),))
            pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
            gov.loss(F.mse_loss(pred, noise, reduction="none")).backward()
            opt.step()
            opt.zero_grad()
        gov.checkpoint()
        gov.end()

    # 3. the index: the source has its row, with what it contributed
    index = govlab.ProvenanceIndex.open(tmp_path / "out", check_model=False)
    assert source in index.sources
    row = index.ds.sel(source=source).isel(checkpoint=-1)  # one checkpoint, after one epoch
    assert int(row["samples_seen"]) == rows_of_source  # each of its records trained once
    assert float(row["grad_norm_sq"].sum()) > 0 and int(row["steps_seen"]) > 0
    assert float(index.by_source().sel(source=source)["grad_norm_sq"].sum()) > 0
