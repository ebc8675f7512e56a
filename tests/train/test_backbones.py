"""govlab's own loop on its other backbones: the ``dit`` preset (an SD3-style MMDiT trained with
rectified flow) and latent training (``model.latent``: a small AutoencoderKL), each trained, scored,
sampled and reloaded at test size."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from govlab.cli import app
from govlab.errors import GovlabError

TINY = {"model": {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "head_dim": 8, "norm_groups": 4,
                  "dit_layers": 3},
        "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "warmup_steps": 1},
        "eval": {"per_prompt": 1, "steps": 2}}


@pytest.mark.parametrize("preset, model", [("dit", {}), ("smoke", {"latent": True, "vae_steps": 3}),
                                           ("dit", {"latent": True, "vae_steps": 3})],
                         ids=["dit", "latent-unet", "latent-dit"])
def test_backbone_trains_scores_samples_and_reloads(tmp_path, preset, model):
    from govlab.models.diffusion import TextToImage

    cfg = {**TINY, "model": {**TINY["model"], **model}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", "--preset", preset, "--config", str(tmp_path / "tiny.yaml"), "--out",
                                 str(run), "--json"])
    assert r.exit_code == 0, (r.output[-2000:], r.exception)
    scores = json.loads(next(line for line in reversed(r.output.splitlines()) if line.startswith("{")))
    assert scores["steps"] == 4 and 0 <= scores["style_acc"] <= 1 and scores["loss_last"] > 0
    r = CliRunner().invoke(app, ["sample", str(run), "--prompt", "a red star, by artist 1", "-n", "2", "--steps", "3",
                                 "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 0, (r.output[-2000:], r.exception)
    m = TextToImage.load(run / "model.safetensors")
    assert m.flow == (preset == "dit") and ("vae" in dict(m.named_children())) == bool(model)
    assert not any(n.startswith("vae.") for n, _ in m.named_parameters())  # the VAE is frozen: buffers
    images = m.generate(["a red star, by artist 1"], steps=2)
    assert images.shape == (1, 3, 16, 16) and images.dtype == torch.uint8
    from govlab.attribution.api import tracin

    with pytest.raises(GovlabError, match="TracIn and D-TRAK score the pixel-space UNet"):
        tracin(run, "a red star")


def test_backbone_config_is_checked():
    from govlab.config import from_dict, load_config

    base = load_config("smoke")
    with pytest.raises(GovlabError, match="backbone must be one of unet, dit"):
        from_dict({"model": {"backbone": "vit"}}, base=base)
    with pytest.raises(GovlabError, match="dit_layers must be >= 3"):
        from_dict({"model": {"backbone": "dit", "dit_layers": 2}}, base=base)
    # a pixel UNet hashes as before backbones existed: runs trained then still resume
    assert from_dict({"model": {"backbone": "unet", "latent": False}}, base=base).hash() == base.hash()
    assert from_dict({"model": {"backbone": "dit"}}, base=base).hash() != base.hash()
