"""The index on disk: round trip, resume, queries, per-sample streaming, size, bad input."""

import shutil

import numpy as np
import pytest
import xarray as xr

from govlab.config import from_dict
from govlab.errors import GovlabError
from govlab.provenance import ProvenanceConfig, ProvenanceIndex, ProvenanceWriter
from govlab.provenance.writer import INDEX, PARTS, write_index
from govlab.routing import attach
from govlab.train import Trainer


def test_round_trip(tiny_run, tmp_path):
    index = ProvenanceIndex.open(tiny_run)
    assert list(index.ds["checkpoint"].values) == [2, 4]
    write_index(index.ds, tmp_path / INDEX)
    again = xr.open_dataset(tmp_path / INDEX).load()
    xr.testing.assert_identical(index.ds, again)
    assert set(index.bands) == set(index.ds["band"].values)


def test_queries_are_consistent(tiny_run):
    index = ProvenanceIndex.open(tiny_run)
    shares = index.shares().sum("source")
    moved = index.by_source()["update_share"].sum("source") != 0
    np.testing.assert_allclose(shares.where(moved, 1.0), 1.0, rtol=1e-9)
    src = index.sources[0]
    by_band = index.bands_of(src)
    assert set(by_band["bands"]) == set(index.ds["band"].values)
    ranked = index.sources_of("outer")["sources"]
    assert [r["share"] for r in ranked] == sorted((r["share"] for r in ranked), reverse=True)
    # a style sample reaches only its own slot: no other source touches artist_0's slot band
    slot = index.sources_of("slot:artist_0")["sources"]
    assert all(r["grad_norm_sq"] == 0.0 for r in slot if r["source"] != "artist_0")
    assert any(r["grad_norm_sq"] > 0.0 for r in slot if r["source"] == "artist_0")


def _fit(cfg, dataset, out, **kw):
    data, hooks = attach(cfg, dataset)
    writer = ProvenanceWriter(cfg.provenance, dataset.sources)
    Trainer(cfg, data, out, hooks=[*hooks, writer], progress=False).fit(**kw)


def test_resume_gives_the_same_index(tiny_cfg, smoke_dataset, tmp_path):
    _fit(tiny_cfg, smoke_dataset, tmp_path / "whole")
    _fit(tiny_cfg, smoke_dataset, tmp_path / "split", until=2)
    _fit(tiny_cfg, smoke_dataset, tmp_path / "split", resume=True)
    whole = ProvenanceIndex.open(tmp_path / "whole", check_model=False).ds
    split = ProvenanceIndex.open(tmp_path / "split", check_model=False).ds
    xr.testing.assert_identical(whole, split)


def test_per_sample_streams_one_file_per_checkpoint(tiny_cfg, smoke_dataset, tmp_path):
    cfg = from_dict({"provenance": {"granularity": "sample"}}, base=tiny_cfg)
    _fit(cfg, smoke_dataset, tmp_path)
    parts = sorted((tmp_path / PARTS).glob("*.nc"))
    assert [p.name for p in parts] == ["step_000002.nc", "step_000004.nc"]
    assert not (tmp_path / INDEX).exists()
    index = ProvenanceIndex.open(tmp_path, check_model=False)
    assert index.dim == "sample" and index.ds.sizes["sample"] == len(smoke_dataset)
    assert int(index.ds["samples_seen"].sum()) == 4 * tiny_cfg.train.batch_size
    # summed by source, the per-sample index gives the cohort figures of the same training
    _fit(tiny_cfg, smoke_dataset, tmp_path / "cohort")
    cohort = ProvenanceIndex.open(tmp_path / "cohort", check_model=False).by_source()
    per_sample = index.by_source().sel(source=cohort["source"].values)
    np.testing.assert_array_equal(per_sample["steps_seen"].values, cohort["steps_seen"].values)
    assert per_sample["steps_seen"].values.max() < index.ds["steps_seen"].groupby("source_id").sum().values.max()
    # a source's share of the update is the sum of its samples' (linear in the gradient); the squared
    # norm is not (per sample: the sum of the samples' squared norms)
    np.testing.assert_allclose(per_sample["update_share"].values, cohort["update_share"].values,
                               rtol=1e-4, atol=1e-12)
    assert (per_sample["update_share"] != 0).any()


def test_resume_from_a_per_sample_state_without_source_steps_is_one_clear_error(tiny_cfg, smoke_dataset,
                                                                                tmp_path):
    from govlab.checkpoint import load_state, save_state
    from govlab.train import CHECKPOINT

    cfg = from_dict({"provenance": {"granularity": "sample"}}, base=tiny_cfg)
    _fit(cfg, smoke_dataset, tmp_path, until=2)
    state = load_state(tmp_path / CHECKPOINT)
    writer_state = next(s for s in state["hooks"] if "acc" in s)
    del writer_state["acc"]["source_steps_seen"]  # as a checkpoint of an earlier govlab left it
    save_state(tmp_path / CHECKPOINT, state)
    parts = sorted(p.name for p in (tmp_path / PARTS).iterdir())
    with pytest.raises(GovlabError, match=r"state of hook ProvenanceWriter lacks .*source_steps_seen"):
        _fit(cfg, smoke_dataset, tmp_path, resume=True)
    assert sorted(p.name for p in (tmp_path / PARTS).iterdir()) == parts  # nothing written


def test_cohort_size_does_not_grow_with_samples(tmp_path):
    from govlab.bench.index import index_bytes

    band_of = {"a.weight": "outer", "b.weight": "middle"}
    sources = ["s0", "s1", "s2"]
    assert index_bytes(1_000, band_of, sources, 4, tmp_path / "1k") == \
        index_bytes(100_000, band_of, sources, 4, tmp_path / "100k")


def test_memorization_scores_land_in_the_index(tiny_cfg, smoke_dataset, tmp_path):
    from govlab.hooks import Hook

    class Scores(Hook):  # duck-typed like the memorization monitor
        latest_scores = {0: 0.5, 3: 0.25}

    data, hooks = attach(tiny_cfg, smoke_dataset)
    writer = ProvenanceWriter(tiny_cfg.provenance, smoke_dataset.sources)
    Trainer(tiny_cfg, data, tmp_path, hooks=[*hooks, Scores(), writer], progress=False).fit()
    mem = ProvenanceIndex.open(tmp_path, check_model=False).ds["mem_score"]
    assert mem.sizes == {"sample": len(data), "checkpoint": 2}
    assert float(mem.sel(sample=3, checkpoint=4)) == 0.25 and np.isnan(float(mem.sel(sample=1, checkpoint=4)))


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_truncated_index_is_one_clear_error(run_copy):
    data = (run_copy / INDEX).read_bytes()
    (run_copy / INDEX).write_bytes(data[:len(data) // 2])
    with pytest.raises(GovlabError, match="index.nc: not a readable netCDF"):
        ProvenanceIndex.open(run_copy)
    assert (run_copy / INDEX).read_bytes() == data[:len(data) // 2]


def test_foreign_index_is_one_clear_error(run_copy):
    xr.Dataset({"x": ("y", np.arange(3))}).to_netcdf(run_copy / INDEX)
    with pytest.raises(GovlabError, match="not a govlab provenance index"):
        ProvenanceIndex.open(run_copy)


def test_index_with_misplaced_dimensions_is_one_clear_error(run_copy):
    ds = ProvenanceIndex.open(run_copy).ds
    write_index(ds.assign(grad_norm_sq=ds["grad_norm_sq"].transpose("band", "source", "checkpoint")),
                run_copy / INDEX)
    with pytest.raises(GovlabError, match=r"variable 'grad_norm_sq' has dimensions \('band', 'source', "
                                          r"'checkpoint'\), expected \('source', 'band', 'checkpoint'\)"):
        ProvenanceIndex.open(run_copy)
    write_index(ds.drop_attrs(), run_copy / INDEX)
    with pytest.raises(GovlabError, match="not a govlab provenance index"):
        ProvenanceIndex.open(run_copy)
    write_index(ds.assign_attrs(bands_json="{not json"), run_copy / INDEX)
    with pytest.raises(GovlabError, match="lacks a JSON attribute 'bands_json'"):
        ProvenanceIndex.open(run_copy)
    write_index(ds.assign_attrs(sources_json="[not json"), run_copy / INDEX)
    with pytest.raises(GovlabError, match="lacks a JSON attribute 'sources_json'"):
        ProvenanceIndex.open(run_copy)
    write_index(ds.drop_attrs().assign_attrs({k: v for k, v in ds.attrs.items() if k != "granularity"}),
                run_copy / INDEX)
    with pytest.raises(GovlabError, match="attribute 'granularity' is None, but the index is laid out per source"):
        ProvenanceIndex.open(run_copy)


def test_per_sample_parts_of_different_trainings_are_one_clear_error(tiny_cfg, smoke_dataset, tmp_path):
    _fit(from_dict({"provenance": {"granularity": "sample"}}, base=tiny_cfg), smoke_dataset, tmp_path)
    part = tmp_path / PARTS / "step_000004.nc"
    ds = xr.open_dataset(part).load()
    write_index(ds.assign_attrs(govlab_version="9.9"), part)  # a resume finished by another version: fine
    assert ProvenanceIndex.open(tmp_path, check_model=False).ds.sizes["checkpoint"] == 2
    write_index(ds.assign_attrs(config_hash="another"), part)
    with pytest.raises(GovlabError, match=r"step_000004.nc: attribute 'config_hash' differs from "
                                          r"step_000002.nc's"):
        ProvenanceIndex.open(tmp_path, check_model=False)
    write_index(ds.drop_vars("source_id"), part)
    with pytest.raises(GovlabError, match="step_000004.nc: per-sample provenance index lacks coordinate 'source_id'"):
        ProvenanceIndex.open(tmp_path, check_model=False)
    write_index(ds.drop_vars("source_steps_seen"), part)
    with pytest.raises(GovlabError, match="step_000004.nc: per-sample provenance index lacks variable 'source_steps_seen'"):
        ProvenanceIndex.open(tmp_path, check_model=False)


def test_index_of_another_model_is_one_clear_error(run_copy, tmp_path):
    ds = ProvenanceIndex.open(run_copy).ds
    write_index(ds.assign_attrs(model_hash="0123456789abcdef"), run_copy / INDEX)
    before = (run_copy / INDEX).read_bytes()
    with pytest.raises(GovlabError, match="index written for model 0123456789abcdef"):
        ProvenanceIndex.open(run_copy)
    assert (run_copy / INDEX).read_bytes() == before


def test_granularity_is_validated():
    with pytest.raises(GovlabError, match="granularity must be one of"):
        from_dict({"provenance": {"granularity": "pixel"}})
    assert ProvenanceConfig().granularity == "cohort"


def test_explorer_reads_a_trained_index_as_the_index_reports_it(tiny_run):
    """The explorer's shares of a real index.nc equal ProvenanceIndex.shares (update_share sums to
    a negative <g, delta> on descent steps, so a sign-blind normalisation would show all zeros)."""
    from govlab.explore.runs import load_runs, source_band

    runs, errors = load_runs([tiny_run])
    assert errors == [] and len(runs) == 1
    index = ProvenanceIndex.open(tiny_run)
    last = int(index.ds.checkpoint.values[-1])
    table = source_band(runs[0], "update_share", last).set_index(["source", "band"])["share"]
    expected = index.shares().sel(checkpoint=last)
    assert table.abs().sum() > 0
    for (source, band), value in table.items():
        assert value == pytest.approx(float(expected.sel(source=source, band=band)), abs=1e-9)


@pytest.mark.parametrize("intervention", [{"intervention": "attenuate", "factor": 0.5},
                                          {"intervention": "regularize", "regularize": "embedding"}])
def test_interventions_reach_the_flagged_samples_of_a_batch_the_index_sorts(tiny_cfg, smoke_dataset, tmp_path,
                                                                            intervention):
    """The writer sorts an unrouted batch by source; the monitor acts on the flagged rows of that order."""
    from govlab.memorization.monitor import attach as attach_monitor

    cfg = from_dict({"routing": {"mode": "off"}, "memorization": {"mode": "monitor", **intervention}}, base=tiny_cfg)
    [monitor] = attach_monitor(cfg, smoke_dataset)
    writer = ProvenanceWriter(cfg.provenance, smoke_dataset.sources)
    trainer = Trainer(cfg, smoke_dataset, tmp_path, hooks=[monitor, writer], progress=False)
    writer.on_start(trainer)
    monitor.on_start(trainer)
    ctx = trainer.make_context()
    drawn = ctx.indices.tolist()
    sorted_rows = sorted(drawn, key=lambda r: writer.group_of_row[r].item())
    row = next(r for i, r in enumerate(drawn) if sorted_rows[i] != r)  # a row the sort moves
    monitor.flagged = {row: 0}
    seen = {}

    def see(module, args, out):
        seen.setdefault("mask", monitor._noise_mask)  # the step's forward, not the writer's recomputation

    handle = trainer.model.text.register_forward_hook(see)
    trainer.train_step(ctx)
    handle.remove()
    flagged = (ctx.indices == row).tolist()
    assert ctx.indices.tolist() == sorted_rows
    if intervention["intervention"] == "attenuate":
        assert ctx.weights.tolist() == [0.5 if f else 1.0 for f in flagged]
    else:
        assert seen["mask"].tolist() == flagged
