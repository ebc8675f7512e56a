"""Training on a CUDA device: the same batches as on the CPU, so the same model and index within float
tolerance; routing, the provenance writer and the memorization monitor run there too. The tests
marked ``gpu`` run only with ``pytest -m gpu`` on a machine with CUDA."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import xarray as xr

from govlab.bench import routing as bench_routing
from govlab.config import from_dict, load_config
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.hooks import Hook
from govlab.memorization.monitor import attach as attach_monitor
from govlab.models.diffusion import TextToImage
from govlab.provenance.hook import attach as attach_provenance
from govlab.routing.hook import attach as attach_routing
from govlab.testing import TINY_MODEL, TINY_TRAIN
from govlab.train import CHECKPOINT, Trainer

TINY = {"model": TINY_MODEL, "train": TINY_TRAIN}
VARIANTS = {
    "plain": {},
    "routed+index": {"routing": {"mode": "routed"}, "provenance": {"enabled": True}},
    "index": {"provenance": {"enabled": True}},
    "monitor": {"memorization": {"mode": "monitor", "detector": "noise", "every": 2, "start": 2,
                                 "intervention": "attenuate", "threshold": 1e-6}},
}


def test_device_is_validated_and_left_out_of_the_config_hash():
    cfg = load_config("smoke")
    # the hashes of these presets before the device setting existed: their runs keep them
    # the demo preset with its governance parts off is the demo of before they were on
    demo = from_dict({"routing": {"mode": "off"}, "provenance": {"enabled": False}, "memorization": {"mode": "off"}},
                     base=load_config("demo"))
    v1 = from_dict({"world": {"version": 1}}, base=cfg)  # the smoke preset on the original world
    assert (v1.hash(), demo.hash()) == ("9fb4cd85fa326dc4", "d15d326da8692de9")
    assert cfg.world.version == 2 and cfg.hash() != v1.hash()  # world version 2 trains other images
    gpu_v1 = from_dict({"world": {"version": 1}}, base=load_config("gpu"))
    assert load_config("gpu").train.device == "cuda" and gpu_v1.hash() == "6b60338f9025e541"
    assert from_dict({"train": {"device": "cuda:1"}}, base=cfg).hash() == cfg.hash()  # resumable elsewhere
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(GovlabError, match="device must be cpu, cuda or cuda:N"):
            from_dict({"train": {"device": bad}}, base=cfg)
    for bad in (0, None):
        with pytest.raises(GovlabError, match=f"train.device: expected a string, got {bad}"):
            from_dict({"train": {"device": bad}}, base=cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_run_on_a_machine_without_cuda_is_refused(tmp_path):
    cfg = from_dict({"train": {"device": "cuda"}}, base=load_config("smoke"))
    with pytest.raises(GovlabError, match="finds no CUDA device"):
        Trainer(cfg, run_dataset(cfg, progress=False), tmp_path, progress=False)


class Losses(Hook):
    """Records each step's loss: the same batches give the same losses on either device."""

    def __init__(self):
        self.losses = []

    def after_step(self, ctx) -> None:
        self.losses.append(float(ctx.loss.detach()))


def govlab(*args, cwd=None):
    return subprocess.run([str(Path(sys.executable).parent / "govlab"), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["bench", "lineage", "--device", "cuda"], "apply to train, routing, index, memorization"),
    (["bench", "index", "--preset", "nope"], "unknown preset 'nope'"),
    (["bench", "train", "--device", "tpu"], "device must be cpu, cuda or cuda:N"),
])
def test_bad_bench_device_or_preset_is_one_line(tmp_path, args, message):
    proc = govlab(*args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("device", ["tpu", "cuda:99"])
def test_bad_train_device_is_one_line_and_keeps_the_run(tmp_path, device):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = govlab("train", "--preset", "smoke", "--device", device, "--out", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert ("device must be cpu, cuda or cuda:N" if device == "tpu" else "CUDA device") in proc.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_run_is_refused_before_the_run_directory_is_cleared(tmp_path):
    from govlab.run import train_run

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(GovlabError, match="finds no CUDA device"):
        train_run(load_config("gpu"), tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def run(cfg, out: Path, resume: bool = False, until: int | None = None) -> tuple[Trainer, list[float]]:
    dataset = run_dataset(cfg, progress=False)
    sources = dataset.sources
    dataset, hooks = attach_routing(cfg, dataset)
    dataset, prov = attach_provenance(cfg, dataset, sources)
    losses = Losses()
    trainer = Trainer(cfg, dataset, out, hooks=[*hooks, *attach_monitor(cfg, dataset), *prov, losses],
                      progress=False)
    return trainer.fit(resume=resume, until=until), losses.losses


def close(a: dict, b: dict, steps: int, lr: float) -> None:
    """Parameters trained from the same start on the same batches agree closely; AdamW may flip the
    sign of a rare near-zero gradient's update, so a few elements may differ by up to 2 lr a step."""
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k].double().cpu() - b[k].double().cpu()).abs()
        assert diff.max() <= 2 * lr * steps + 1e-6, k
        assert (diff > 1e-4).double().mean() <= 1e-3, k


@pytest.fixture
def full_precision():
    """No TF32 (Hopper's default for cuDNN convolutions): CPU and CUDA sums then agree to ~1e-6."""
    with bench_routing.full_precision():
        yield


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.gpu
@needs_cuda
def test_cuda_training_matches_cpu(variant, tmp_path, full_precision):
    base = from_dict({"name": f"dev-{variant}", **TINY, **VARIANTS[variant]}, base=load_config("smoke"))
    cpu, cpu_losses = run(base, tmp_path / "cpu")
    gpu, gpu_losses = run(from_dict({"train": {"device": "cuda"}}, base=base), tmp_path / "cuda")
    assert next(gpu.model.parameters()).is_cuda
    assert len(gpu_losses) == base.train.steps
    torch.testing.assert_close(gpu_losses, cpu_losses, rtol=1e-4, atol=1e-6)  # the same batches
    close(cpu.model.state_dict(), gpu.model.state_dict(), base.train.steps, base.train.lr)
    saved = TextToImage.load(tmp_path / "cuda" / "checkpoints" / "step_000004.safetensors")
    for k, v in saved.state_dict().items():
        assert torch.equal(v, gpu.model.state_dict()[k].cpu()), k
    if "provenance" in VARIANTS[variant]:
        a, b = (xr.open_dataset(p / "index.nc").load() for p in (tmp_path / "cpu", tmp_path / "cuda"))
        for name in ("grad_norm_sq", "update_share"):
            assert float(abs(a[name]).sum()) > 0
            xr.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-12)
        xr.testing.assert_identical(a["steps_seen"], b["steps_seen"])
    if "memorization" in VARIANTS[variant]:  # the same scores (the flags: every watched caption, threshold ~0)
        scores = [next(h for h in t.hooks if hasattr(h, "latest_scores")).latest_scores for t in (cpu, gpu)]
        assert scores[0] and scores[0].keys() == scores[1].keys()
        torch.testing.assert_close([scores[1][r] for r in scores[0]], list(scores[0].values()), rtol=1e-3, atol=0)
        flags = [[(e["step"], e["sample"]) for e in t.events.read() if e["event"] == "memorization_flag"]
                 for t in (cpu, gpu)]
        assert flags[0] and flags[0] == flags[1]
    images = gpu.model.generate(["a red circle"] * 4, steps=2)
    assert images.device.type == "cpu" and images.dtype == torch.uint8
    diff = (images.float() - cpu.model.generate(["a red circle"] * 4, steps=2).float()).abs().mean()
    assert diff < 1.0, diff  # pixel values 0..255


@pytest.mark.gpu
@needs_cuda
def test_cuda_resume_continues_the_run(tmp_path, full_precision):
    cfg = from_dict({"name": "dev-resume", **VARIANTS["routed+index"], "train": {"device": "cuda"}},
                    base=from_dict(TINY, base=load_config("smoke")))
    whole, whole_losses = run(cfg, tmp_path / "whole")
    run(cfg, tmp_path / "parts", until=2)
    assert (tmp_path / "parts" / CHECKPOINT).is_file()
    resumed, resumed_losses = run(cfg, tmp_path / "parts", resume=True)
    torch.testing.assert_close(resumed_losses, whole_losses[2:], rtol=1e-5, atol=1e-7)
    close(whole.model.state_dict(), resumed.model.state_dict(), 2, cfg.train.lr)
