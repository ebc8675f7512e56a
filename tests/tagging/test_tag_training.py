"""Training on the tagged copy: routing leakage 0, and the index's source shares those of a run on the
ground-truth labels, within its 95% bootstrap interval (smoke world, tiny routed model)."""

import json

import numpy as np
import pytest
import torch

from govlab.config import from_dict
from govlab.data.dataset import Dataset
from govlab.provenance import ProvenanceIndex, ProvenanceWriter
from govlab.routing import attach, prepare
from govlab.routing.bands import KV
from govlab.routing.reference import leakage
from govlab.testing import TINY_EVAL, TINY_MODEL, one_thread
from govlab.train import Trainer, build_model

# Sequestered adapters beside UNet layers: a watermark or identity told by the image alone has no trigger
# word in its caption for the default caption adapters (routing refuses such data with one clear error).
TINY = {"model": TINY_MODEL,
        "routing": {"mode": "routed", "slot_rank": 2, "sequester_rank": 2,
                    "sequester_targets": [*KV, "unet.up_blocks.*.resnets.*.conv2"]},
        "train": {"steps": 4, "batch_size": 24, "checkpoint_every": 2, "warmup_steps": 1},
        "eval": TINY_EVAL,
        "provenance": {"enabled": True, "granularity": "sample"}}
FIELDS = ("categories", "source_id", "license", "opt_out")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tagged_dataset(tagged_blind, tagging_dataset, smoke_world):
    """The world's images and captions with the labels the tagger assigned (from images and captions
    stripped of source words) in place of the ground truth."""
    _, out, _ = tagged_blind
    assert tagging_dataset.root == smoke_world  # the images and ground truth of the world that was tagged
    tags = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [t["file_name"] for t in tags] == [r["file_name"] for r in tagging_dataset.records]
    records = [{**r, **{k: t[k] for k in FIELDS}} for r, t in zip(tagging_dataset.records, tags)]
    return Dataset(out, records, tagging_dataset.images)


def fit(cfg, dataset, out):
    data, hooks = attach(cfg, dataset)
    writer = ProvenanceWriter(cfg.provenance, dataset.sources)
    Trainer(cfg, data, out, hooks=[*hooks, writer], progress=False).fit()
    return ProvenanceIndex.open(out, check_model=False)


def shares(u: np.ndarray, src: np.ndarray, sources: list[str]) -> np.ndarray:
    """(source, band) share of each band's update from per-sample update shares ``u`` (sample, band)."""
    by = np.stack([u[src == s].sum(0) for s in sources])
    total = by.sum(0)
    return np.where(total != 0, by / np.where(total != 0, total, 1), 0.0)


def sample_rows(index) -> np.ndarray:
    """The dataset row of each of the index's samples."""
    return np.asarray(index.ds["sample"].values)


def per_sample(index):
    ds = index.ds
    u = ds["update_share"].sum("checkpoint").transpose("sample", "band").values
    return u, np.asarray(ds["source_id"].values).astype(str), [str(b) for b in ds["band"].values]


def test_tagged_copy_routes_without_leakage(tagging_cfg, tagged_dataset):
    cfg = from_dict({"name": "tag-leak", **TINY}, base=tagging_cfg)
    torch.manual_seed(0)
    model = build_model(cfg, tagged_dataset)
    router = prepare(model, cfg.routing, tagged_dataset.records).install()
    model.to(torch.float64)
    rng = np.random.default_rng(0)
    rows = [int(i) for i in rng.choice(len(tagged_dataset), 20, replace=False)]
    records = [tagged_dataset.records[i] for i in rows]
    g = torch.Generator().manual_seed(0)
    batch = {"x0": tagged_dataset.images[rows].double() / 127.5 - 1,
             "tokens": model.tokenizer([r["caption"] for r in records]),
             "noise": torch.randn(len(rows), 3, 16, 16, generator=g).double(),
             "timesteps": torch.randint(0, 1000, (len(rows),), generator=g),
             "weights": torch.ones(len(rows), dtype=torch.float64)}
    routed = leakage(model, router, records, batch)
    plain = leakage(model, router, records, batch, routed=False)
    assert len(routed) >= 3 and max(routed.values()) == 0.0
    assert max(plain.values()) > 0.1  # the same batch without routing leaks: the check can fail


def test_index_shares_match_the_ground_truth_run(tagging_cfg, tagging_dataset, tagged_dataset, tmp_path):
    cfg = from_dict({"name": "tag-index", **TINY}, base=tagging_cfg)
    truth = fit(cfg, tagging_dataset, tmp_path / "truth")
    tagged = fit(cfg, tagged_dataset, tmp_path / "tagged")
    sources = sorted(set(truth.sources) | set(tagged.sources))
    u, src, bands = per_sample(truth)
    ut, srct, bands_t = per_sample(tagged)
    assert bands == bands_t
    got, want = shares(ut, srct, sources), shares(u, src, sources)
    # 95% interval of the ground-truth run's shares: samples drawn with replacement
    rng = np.random.default_rng(0)
    boot = np.stack([shares(u[i], src[i], sources) for i in (rng.integers(0, len(u), len(u)) for _ in range(500))])
    lo, hi = np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)
    moved = want.sum(0) > 0
    assert moved.sum() >= 3  # several bands moved: the comparison is not of zeros
    # The tagger's own errors (2 of 190 images here: a watermark given to an artist's image, an identity
    # to a stock photo) move the bands that route those images differently, by at most those images'
    # share of the band in either run; every other band must agree within the interval.
    wrong_rows = [i for i, (r, t) in enumerate(zip(tagging_dataset.records, tagged_dataset.records))
                  if sorted(r["categories"]) != sorted(t["categories"]) or r["source_id"] != t["source_id"]]
    assert len(wrong_rows) <= 0.02 * len(u), wrong_rows  # tests/tagging/test_tagging.py holds the tagger to this
    assert (sample_rows(truth) == np.arange(len(u))).all() and (sample_rows(tagged) == np.arange(len(ut))).all()
    def part(v):  # the wrong rows' share of each band's update (shares are signed: magnitudes)
        total = np.abs(v.sum(0))
        return np.abs(v[wrong_rows]).sum(0) / np.where(total > 0, total, 1)

    slack = np.maximum(part(ut), part(u))
    assert (slack[moved] == 0).sum() >= 3  # bands the errors did not touch are compared exactly as before
    inside = (got >= lo - slack - 1e-9) & (got <= hi + slack + 1e-9)
    assert inside[:, moved].all(), [(s, b, got[i, j], lo[i, j], hi[i, j], slack[j]) for i, s in enumerate(sources)
                                    for j, b in enumerate(bands) if moved[j] and not inside[i, j]]
    # the check can fail: labels with every artist's images credited to the next artist land outside
    rotate = {f"artist_{k}": f"artist_{(k + 1) % 6}" for k in range(6)}
    wrong = Dataset(tagging_dataset.root, [{**r, "source_id": rotate.get(r["source_id"], r["source_id"])}
                                         for r in tagging_dataset.records], tagging_dataset.images)
    uw, srcw, _ = per_sample(fit(cfg, wrong, tmp_path / "wrong"))
    off = shares(uw, srcw, sources)
    assert not ((off >= lo - 1e-9) & (off <= hi + 1e-9))[:, moved].all()
