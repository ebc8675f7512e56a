"""The governed example under ``accelerate launch`` with 2 CPU processes (gloo), as written: no DDP
kwargs in the script. On CPUs accelerate's multi-process launcher is ``--multi_gpu`` with
``ACCELERATE_USE_CPU=true`` (``--cpu`` alone starts one process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from govlab.bench.foreign import GOVERNED

HERE = Path(__file__).resolve().parent
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from govlab.testing import build_tiny_pipeline, write_tiny_imagefolder

    base = tmp_path_factory.mktemp("accelerate")
    return base, build_tiny_pipeline(base / "unet", "unet"), write_tiny_imagefolder(base / "data", 16)


def launch(args, cwd, *, cpu="true"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "ACCELERATE_USE_CPU": cpu}
    return subprocess.run([*LAUNCH, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def example_args(pipe, data, out, steps=4):
    return [GOVERNED, "--pretrained_model_name_or_path", pipe, "--train_data_dir", data, "--output_dir", out,
            "--max_train_steps", steps, "--checkpointing_steps", 2, "--train_batch_size", 2]


def test_governed_example_on_two_gloo_processes(tiny):
    import xarray as xr

    base, pipe, data = tiny
    out = base / "two"
    r = launch(example_args(pipe, data, out), base)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nc")) == ["index.nc"]
    with xr.open_dataset(out / "index.nc") as ds:
        d = json.loads(ds.attrs["distributed_json"])
        seen = ds.samples_seen.sum("source").values.tolist()
    assert d["world_sizes"] == [[0, 2]] and d["backend"] == "gloo"
    assert seen == [8, 8]  # per 2-step interval: 2 processes x batch 2 x 2 steps
    # one state written (process 0), and the random state of each of the 2 processes (accelerate's)
    assert sorted(p.name for p in (out / "checkpoint-4").iterdir()) == [
        "custom_checkpoint_0.pkl", "model.safetensors", "optimizer.bin", "random_states_0.pkl",
        "random_states_1.pkl", "scheduler.bin"]


def test_routed_gradients_of_two_processes_equal_one(tiny):
    """Governance, not DDP, averages the gradients: 2 processes' routed gradients of a step equal one
    process's on the global batch, None where no process's shard reached a band."""
    base, pipe, data = tiny
    out = base / "grads"
    out.mkdir()
    step = [HERE / "accelerate_step.py", pipe, data, out, 2]  # 1 row per process: bands left out
    one = subprocess.run([sys.executable, *map(str, step)], cwd=base, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    r = launch(step, base)
    assert r.returncode == 0, r.stderr[-3000:]
    want = torch.load(out / "grads-1-0.pt")
    assert any(g is None for g in want.values())  # the check covers parameters no sample reached
    scale = max(float(g.abs().max()) for g in want.values() if g is not None)
    for rank in (0, 1):
        got = torch.load(out / f"grads-2-{rank}.pt")
        assert {k for k, g in got.items() if g is None} == {k for k, g in want.items() if g is None}
        assert max(float((got[k] - g).abs().max()) for k, g in want.items() if g is not None) <= 1e-5 * scale


@pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs accelerate runs the processes on them (NCCL)")
def test_processes_accelerate_runs_alone_are_refused(tiny):
    """Without ACCELERATE_USE_CPU the launcher joins a torch.distributed group of 2 on CPUs, but
    accelerate runs each process alone: refused before anything is written."""
    base, pipe, data = tiny
    out = base / "alone"
    r = launch(example_args(pipe, data, out, steps=2), base, cpu="false")
    assert r.returncode != 0
    assert "accelerate runs it alone" in r.stderr and "ACCELERATE_USE_CPU=true" in r.stderr
    assert not out.exists()
