"""The watermark study on a tiny world-version-2 config: every figure with its interval, the oracle
trained on no watermarked image, dropping the adapter exact and confined to it."""

import json

import pytest
import torch

from govlab.checkpoint import load_state
from govlab.config import from_dict
from govlab.data.cache import run_dataset
from govlab.errors import GovlabError
from govlab.models.diffusion import TextToImage
from govlab.routing.hook import attach
from govlab.routing.slots import scale_slot
from govlab.studies.localization import configs, train_one
from govlab.train import CHECKPOINT
from govlab.studies.watermark import KINDS, VARIANTS, data_rates, main, table, watermark


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("watermark-study")


@pytest.fixture(scope="module")
def result(tiny_cfg, workdir):
    return watermark(tiny_cfg, per_prompt=2, workdir=workdir)


def test_every_variant_has_both_rates_with_intervals(result):
    assert set(result["variants"]) == set(VARIANTS)
    for v in result["variants"].values():
        for k in KINDS:
            lo, hi = v[f"{k}_ci"]
            assert 0.0 <= lo <= v[k] <= hi <= 1.0
            assert v[f"{k}_n"] == result["generations"][k] > 0
    assert set(result["verdict"]) == {*KINDS, "all_within"}
    json.dumps(result)
    assert "(oracle)" in table(result)


def test_data_rate_is_the_worlds_ground_truth(tiny_cfg, result):
    records = run_dataset(tiny_cfg).records
    stock = [r for r in records if r["kind"] == "stock"]
    assert result["data_rate"]["stock"] == pytest.approx(sum(r["watermark"] for r in stock) / len(stock), abs=1e-4)
    assert 0 < result["data_rate"]["other"] < result["data_rate"]["stock"]  # the world's shares: 0.2 against 0.7
    assert data_rates([{"categories": ["style"], "kind": "stock"}, {"categories": ["watermark"], "kind": "artist"}]
                      )["other"] == 1.0


def test_the_oracle_saw_no_watermarked_image_and_the_drop_touches_only_the_adapter(tiny_cfg, workdir, result):
    run = configs(tiny_cfg)
    marker = json.loads((workdir / "retrain" / "experiment.json").read_text())
    assert marker["spec"]["exclude_category"] == "watermark" and marker["done"]
    data = run_dataset(tiny_cfg)
    clean = data.subset([i for i, r in enumerate(data.records) if "watermark" not in r["categories"]])
    assert 0 < len(clean) < len(data)
    trained = {name: load_state(workdir / name / CHECKPOINT)["data_hash"] for name in ("routed", "retrain")}
    assert trained["retrain"] == attach(run["retrain"], clean)[0].fingerprint() != trained["routed"]
    model = TextToImage.load(train_one(run["routed"], workdir / "routed"))  # reused from the study
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scale_slot(model, "watermark", 0.0)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all("watermark" in n for n in moved)


def test_world_version_1_and_no_adapter_are_refused(tiny_cfg):
    v1 = from_dict({"world": {"version": 1}}, base=tiny_cfg)
    with pytest.raises(GovlabError, match="world version 1"):
        watermark(v1)
    none = from_dict({"routing": {"sequestered": ["identity"]}}, base=tiny_cfg)
    with pytest.raises(GovlabError, match="lacks 'watermark'"):
        watermark(none)
    with pytest.raises(SystemExit):
        main(["--seeds", "0"])


def test_the_bench_runs_the_study():
    from govlab.bench import BENCHMARKS
    from govlab.bench.watermark import bench_watermark

    assert BENCHMARKS["watermark"] is bench_watermark
