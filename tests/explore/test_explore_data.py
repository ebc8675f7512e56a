"""The explorer's data layer: index validation, tables, run files, the CLI's errors, the preview."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from govlab.errors import GovlabError
from govlab.explore.runs import (Run, band_timeline, event_images, lineage_table, load_runs, mem_events,
                                 open_index, sample_grid, source_band)
from govlab.explore.synthetic import fixture_run, synthetic_index, write_index

GOVLAB = str(Path(sys.executable).parent / "govlab")


@pytest.fixture
def run(tmp_path):
    return Run(fixture_run(tmp_path / "routed"))


def test_synthetic_index_round_trips_and_validates(tmp_path):
    for ds in (synthetic_index(mem_samples=10), synthetic_index(samples=500, routed=False)):
        write_index(ds, tmp_path / "index.nc")
        back = open_index(tmp_path / "index.nc")
        xr.testing.assert_identical(back, ds)
        back.close()


@pytest.mark.parametrize("breakage, message", [
    (lambda ds: ds.drop_vars("steps_seen"), "lacks variable 'steps_seen'"),
    (lambda ds: ds.drop_vars(["grad_norm_sq", "update_share", "steps_seen"]), "not a govlab provenance index"),
    (lambda ds: ds.assign(update_share=ds["update_share"].transpose("band", "source", "checkpoint")),
     "variable 'update_share' has dimensions"),
    (lambda ds: ds.rename({"source": "artist"}), r"has dimensions \('artist', "),
])
def test_open_index_names_what_is_wrong(tmp_path, breakage, message):
    write_index(breakage(synthetic_index()), tmp_path / "index.nc")
    with pytest.raises(GovlabError, match=message):
        open_index(tmp_path / "index.nc")


def test_not_netcdf_and_missing_index(tmp_path):
    (tmp_path / "index.nc").write_text("hello")
    with pytest.raises(GovlabError, match="not a netCDF file"):
        open_index(tmp_path / "index.nc")
    with pytest.raises(GovlabError, match="no provenance index"):
        open_index(tmp_path / "other.nc")
    runs, errors = load_runs([tmp_path, tmp_path / "nowhere"])
    assert runs == [] and "not a netCDF file" in errors[0] and "run directory not found" in errors[1]


def test_tables_of_a_routed_index(run):
    df = source_band(run, "grad_norm_sq", 400)
    assert np.allclose(df.groupby("band")["share"].sum(), 1.0)  # shares of each band over sources
    slot = df[df["band"] == "slot:artist_2"].set_index("source")["share"]
    assert slot["artist_2"] == pytest.approx(1.0) and slot.drop("artist_2").max() == 0  # routing
    tl = band_timeline(run, "update_share", "artist_2")
    assert sorted(tl["checkpoint"].unique()) == run.checkpoints and set(tl["band"]) == set(run.bands)
    with pytest.raises(GovlabError, match="no source 'artist_9'"):
        band_timeline(run, "update_share", "artist_9")
    with pytest.raises(GovlabError, match="cohort|source granularity"):
        sample_grid(run, "update_share", 400)


def test_per_sample_index_grid_and_sources(tmp_path):
    run = Run(fixture_run(tmp_path / "ps", samples=600))
    xs, ys, z = sample_grid(run, "update_share", 100)
    assert z.shape == (len(ys), len(xs)) == (600, len(run.bands))
    by_source = source_band(run, "update_share", 100).set_index(["source", "band"])["share"]
    direct = run.index["update_share"].sel(checkpoint=100, band="trunk")
    assert by_source["artist_1", "trunk"] == pytest.approx(float(direct[run.index["source_id"] == "artist_1"].sum()))


def test_events_lineage_and_event_images(run, tmp_path):
    assert mem_events(run).empty
    with pytest.raises(GovlabError, match="no lineage result"):
        lineage_table(run)
    (run.path / "events.jsonl").write_text(
        json.dumps({"event": "ingestion_rejected", "step": 0}) + "\n"
        + json.dumps({"event": "mem_flag", "step": 5, "sample": 3, "score": 2.5, "threshold": 1.0,
                      "action": "drop", "image": "../outside.png", "generation": "g.png"}) + "\n")
    (tmp_path / "outside.png").write_bytes(b"\x89PNG")
    (run.path / "g.png").write_bytes(b"\x89PNG")
    run = Run(run.path)
    flags = mem_events(run)
    assert list(flags["step"]) == [5] and flags["action"][0] == "drop"
    assert list(event_images(run, flags.iloc[0].to_dict())) == ["generation"]  # nothing outside the run
    (run.path / "events.jsonl").write_text("{not json\n")
    with pytest.raises(GovlabError, match="events.jsonl line 1: not valid JSON"):
        Run(run.path).events
    (run.path / "lineage.json").write_text(json.dumps({"votes": [{"prompt": "p", "distances": {"a": 0.5}}]}))
    assert lineage_table(Run(run.path))["distance"].tolist() == [0.5]


def test_explore_cli_refuses_a_foreign_index_in_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(bad / "index.nc")
    proc = subprocess.run([GOVLAB, "explore", str(bad), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a govlab provenance index" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_explore_is_registered():
    from govlab.bench import BENCHMARKS

    assert "explore" in BENCHMARKS


def test_attenuation_preview_scales_the_slot_and_restores_it(tmp_path):
    import torch

    from govlab.explore.preview import AttenuationPreview

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = Run(fixture_run(tmp_path / "routed", model=True))
        preview = AttenuationPreview(run)
        state = {k: v.clone() for k, v in preview.model.state_dict().items()}
        before, after = preview("artist_1", 0.0)
        _, same = preview("artist_1", 1.0)
    finally:
        torch.set_num_threads(threads)
    assert before.shape == after.shape and before.dtype == torch.uint8
    assert not torch.equal(before, after) and torch.equal(before, same)
    assert all(torch.equal(v, preview.model.state_dict()[k]) for k, v in state.items())
    assert (run.path / "events.jsonl").is_file() and (run.path / "lineage.json").is_file()
    with pytest.raises(GovlabError, match="no model.safetensors"):
        AttenuationPreview(Run(fixture_run(tmp_path / "nomodel")))
