"""The sweep runner: Ray and serial runs give the same results, cached jobs are not submitted, a failed
job is named by its config, an unreachable cluster is refused at once."""

import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from govlab.data.cache import build_once
from govlab.errors import GovlabError
from govlab.sweep import Job, Sweep, SweepJobError, check_address


def noisy_sum(folder, x: int) -> dict:
    """A cache entry per ``x``: the sum of a seeded random matrix product (torch, so that the torch
    thread count matters), built once under its lock; records which process built it."""
    path = Path(folder) / f"{x}.json"

    def build():
        g = torch.Generator().manual_seed(x)
        a, b = torch.randn(96, 96, generator=g), torch.randn(96, 96, generator=g)
        if x == 13:
            raise ValueError("thirteen is unlucky")
        path.write_text(json.dumps({"value": float((a @ b).sum()), "pid": os.getpid(),
                                    "threads": torch.get_num_threads()}))

    build_once(path, path.is_file, build)
    return json.loads(path.read_text())


def jobs(folder: Path, xs) -> list[Job]:
    # the folder as a Path: an argument Ray holds in its object store (a ref the worker must resolve)
    return [Job(noisy_sum, (folder, x), {"x": x}, cached=(folder / f"{x}.json").is_file) for x in xs]


@pytest.mark.skipif(not __import__("govlab.sweep", fromlist=["x"]).ray_available(), reason="ray not installed")
def test_ray_sweep_equals_serial_skips_cached_and_names_the_failed_job(tmp_path):
    """One Ray start for every Ray check (it takes tens of seconds on a loaded 2-core machine)."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import a test module
    serial_dir, ray_dir = tmp_path / "serial", tmp_path / "ray"
    serial_dir.mkdir()
    ray_dir.mkdir()
    xs = list(range(6))
    serial = Sweep(workers=1).run(jobs(serial_dir, xs), progress=False)
    assert {r["pid"] for r in serial} == {os.getpid()} and {r["threads"] for r in serial} == {1}

    for x in (0, 3):  # already in the cache: not submitted, loaded here
        entry = json.loads((serial_dir / f"{x}.json").read_text())
        (ray_dir / f"{x}.json").write_text(json.dumps({**entry, "pid": -1}))
    sweep = Sweep(workers=2)
    assert not sweep.serial
    try:
        sweep.connect()
    except GovlabError as e:  # Ray's raylet gets 30 s to register: not always enough on a loaded machine
        if "did not start" not in str(e):
            raise
        pytest.skip(str(e))
    try:
        got = sweep.run(jobs(ray_dir, xs), progress=False)
        assert [r["value"] for r in got] == [r["value"] for r in serial]  # the same bits
        assert [r["pid"] for r in got if r["pid"] == -1] == [-1, -1]
        ray_pids = {r["pid"] for x, r in zip(xs, got) if x not in (0, 3)}
        assert os.getpid() not in ray_pids  # computed by Ray workers
        assert {r["threads"] for r in got if r["pid"] != -1} == {1}

        with pytest.raises(SweepJobError, match=r'sweep job \{"x": 13\} failed: ValueError: thirteen') as e:
            sweep.run(jobs(ray_dir, [7, 13, 8]), progress=False)
        assert e.value.config == {"x": 13} and isinstance(e.value.__cause__, ValueError)
        assert not (ray_dir / "13.json").exists()
    finally:
        ray.shutdown()


def test_serial_sweep_names_the_failed_job_and_keeps_the_threads(tmp_path):
    before = torch.get_num_threads()
    with pytest.raises(SweepJobError, match=r'\{"x": 13\}') as e:
        Sweep(workers=1).run(jobs(tmp_path, [12, 13]), progress=False)
    assert isinstance(e.value.cause, ValueError) and (tmp_path / "12.json").is_file()
    assert torch.get_num_threads() == before
    with pytest.raises(GovlabError, match="--workers must be >= 1"):
        Sweep(workers=0)


def test_unreachable_address_is_refused_at_once(tmp_path, monkeypatch):
    t0 = time.perf_counter()
    with pytest.raises(GovlabError, match="no Ray cluster answers there"):
        check_address("127.0.0.1:9", timeout=2)
    assert time.perf_counter() - t0 < 10
    with pytest.raises(GovlabError, match="expected host:port"):
        check_address("nowhere")
    from typer.testing import CliRunner

    from govlab.cli import app

    monkeypatch.setenv("GOVLAB_CACHE", str(tmp_path / "cache"))
    for args in (["bench", "sweep", "--quick", "--json"], ["zoo", "build", str(tmp_path / "zoo"), "--quick"]):
        err = CliRunner().invoke(app, [*args, "--address", "127.0.0.1:9"]).exception
        assert isinstance(err, GovlabError) and "--address 127.0.0.1:9: no Ray cluster answers there" in str(err)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "zoo").exists()  # nothing written
    err = CliRunner().invoke(app, ["bench", "train", "--quick", "--workers", "2"]).exception
    assert isinstance(err, GovlabError) and "--workers and --address apply to sweep" in str(err)
