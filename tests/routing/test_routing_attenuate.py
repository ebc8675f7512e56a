import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from govlab.models.diffusion import TextToImage
from govlab.run import train_run
from govlab.studies.attenuate import attenuate_run

GOVLAB = [str(Path(sys.executable).parent / "govlab")]


def govlab(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(GOVLAB + list(args), capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory, tiny_cfg):
    out = tmp_path_factory.mktemp("runs") / "routed"
    torch.set_num_threads(1)
    train_run(tiny_cfg, out, progress=False)
    return out


def test_attenuate_scales_one_slot_and_reports(routed_run, tmp_path):
    result = attenuate_run(routed_run, "artist_2", 0.0, tmp_path / "zeroed")
    before = TextToImage.load(routed_run / "model.safetensors").state_dict()
    after = TextToImage.load(tmp_path / "zeroed/model.safetensors").state_dict()
    ups = [k for k in after if k.startswith("slots.") and ".up.artist_2" in k]
    assert ups and all(after[k].abs().sum() == 0 and before[k].abs().sum() > 0 for k in ups)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in ups)
    assert result["layers"] == len(ups) and result["before"]["style_acc_source"] is not None
    for name in ("config.yaml", "scores.json", "attenuation.json", "report.md", "routing.json"):
        assert (tmp_path / "zeroed" / name).is_file(), name
    assert (tmp_path / "zeroed/config.yaml").read_text() == (routed_run / "config.yaml").read_text()
    assert "artist_2" in (tmp_path / "zeroed/report.md").read_text()

    attenuate_run(routed_run, "artist_2", 0.5, tmp_path / "half")
    half = TextToImage.load(tmp_path / "half/model.safetensors").state_dict()
    assert all(torch.allclose(half[k], 0.5 * before[k]) for k in ups)


def test_attenuate_cli(routed_run, tmp_path):
    proc = govlab("attenuate", str(routed_run), "--source", "watermark", "--factor", "0",
                  "--out", str(tmp_path / "nowm"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["source"] == "watermark" and "watermark_rate" in result["after"]


def test_attenuate_user_error_is_one_line(routed_run, tmp_path):
    proc = govlab("attenuate", str(routed_run), "--source", "artist_9", "--factor", "0", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "no slot for source 'artist_9'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_attenuate_refuses_bad_input(routed_run, tmp_path, tiny_cfg, smoke_dataset):
    from dataclasses import replace

    from govlab.config import to_yaml
    from govlab.errors import GovlabError
    from govlab.train import build_model

    with pytest.raises(GovlabError, match="not a govlab run directory"):
        attenuate_run(tmp_path, "artist_1", 0.0, tmp_path / "x")
    with pytest.raises(GovlabError, match="--factor must be a finite number >= 0"):
        attenuate_run(routed_run, "artist_1", -1.0, tmp_path / "x")
    with pytest.raises(GovlabError, match="must be a new run directory"):
        attenuate_run(routed_run, "artist_1", 0.0, routed_run)
    plain_cfg = replace(tiny_cfg, routing=replace(tiny_cfg.routing, mode="off"))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.yaml").write_text(to_yaml(plain_cfg))
    build_model(plain_cfg, smoke_dataset).save(plain / "model.safetensors")
    with pytest.raises(GovlabError, match="has no slots"):
        attenuate_run(plain, "artist_1", 0.0, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_attenuate_refuses_an_out_it_may_not_replace_before_scoring(routed_run, tmp_path, monkeypatch):
    from govlab.errors import GovlabError

    def no_scoring(*a, **k):
        raise AssertionError("scored before --out was checked")

    monkeypatch.setattr("govlab.eval.scores.score_model", no_scoring)
    (tmp_path / "file").write_text("user data")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("user data")
    for out, message in (("file", "is not a directory"), ("folder", "is not a govlab run directory")):
        with pytest.raises(GovlabError, match=message):
            attenuate_run(routed_run, "artist_1", 0.0, tmp_path / out)
    assert (tmp_path / "file").read_text() == (tmp_path / "folder" / "notes.txt").read_text() == "user data"


def test_attenuated_run_is_sealed_and_never_half_written(routed_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from govlab.cli import app
    from govlab.eval import scores

    out = tmp_path / "runs" / "zeroed"
    attenuate_run(routed_run, "artist_2", 0.0, out)
    ok = CliRunner().invoke(app, ["verify", str(out)])
    assert ok.exit_code == 0, ok.stdout
    assert [p.name for p in out.parent.iterdir()] == ["zeroed"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scores, "score_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        attenuate_run(routed_run, "artist_2", 0.0, tmp_path / "runs" / "cut")
    assert [p.name for p in out.parent.iterdir()] == ["zeroed"]  # no partial run, no temporary directory

    with pytest.raises(KeyboardInterrupt):  # into the finished run: it is kept until a new one is complete
        attenuate_run(routed_run, "artist_2", 0.5, out)
    assert CliRunner().invoke(app, ["verify", str(out)]).exit_code == 0  # the previous run, whole
    assert json.loads((out / "attenuation.json").read_text())["factor"] == 0.0
