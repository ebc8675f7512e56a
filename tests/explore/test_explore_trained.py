"""The explorer on real training output: a per-sample run (its index in ``index.parts/``, read by the
provenance index's own reader), the monitor's scores and flags, the run directory reader."""

import pytest

from govlab.errors import GovlabError
from govlab.explore.runs import (Run, band_timeline, load_runs, mem_events, monitor_scores, sample_grid,
                                 source_band)
from govlab.explore.synthetic import TINY
from govlab.provenance.index import ProvenanceIndex
from govlab.rundir import RunDir

GOVERNED = {"provenance": {"enabled": True, "granularity": "sample"},
            "memorization": {"mode": "monitor", "every": 10, "start": 10, "watch_size": 24, "threshold": 1e-6,
                             "intervention": "attenuate", "factor": 0.5},
            "train": {**TINY["train"], "checkpoint_every": 15}}


@pytest.fixture(scope="module")
def per_sample_run(tmp_path_factory):
    """30 steps of the tiny routed model with a per-sample index and the monitor (seconds on a CPU)."""
    import torch

    from govlab.config import from_dict, load_config
    from govlab.data.cache import run_dataset
    from govlab.memorization.monitor import attach as attach_monitor
    from govlab.provenance.hook import attach as attach_provenance
    from govlab.routing import attach
    from govlab.train import Trainer

    cfg = from_dict({**TINY, **GOVERNED}, base=load_config("smoke"))
    dataset = run_dataset(cfg, progress=False)
    data, hooks = attach(cfg, dataset)
    data, index = attach_provenance(cfg, data, dataset.sources)
    out = tmp_path_factory.mktemp("governed") / "per-sample"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, data, out, hooks=[*hooks, *attach_monitor(cfg, data), *index], progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_explorer_reads_a_per_sample_run(per_sample_run):
    assert not (per_sample_run / "index.nc").exists() and (per_sample_run / "index.parts").is_dir()
    runs, errors = load_runs([per_sample_run])
    assert errors == [] and len(runs) == 1
    run, index = runs[0], ProvenanceIndex.open(per_sample_run)  # the same reader, checked against the model
    assert run.has_index and run.unit == "sample" and run.checkpoints == [15, 30]
    assert run.sources == index.sources
    xs, ys, z = sample_grid(run, "update_share", 30)
    assert z.shape == (len(ys), len(xs)) == (index.ds.sizes["sample"], len(run.bands))
    table = source_band(run, "update_share", 30).set_index(["source", "band"])["share"]
    expected = index.shares().sel(checkpoint=30)
    assert table.abs().sum() > 0
    for (source, band), value in table.items():
        assert value == pytest.approx(float(expected.sel(source=source, band=band)), abs=1e-9)
    timeline = band_timeline(run, "update_share", run.sources[0])
    assert sorted(timeline["checkpoint"].unique()) == [15, 30]


def test_the_memorization_view_of_a_monitored_run(per_sample_run):
    from govlab.explore.views import memorization_plot

    run = Run(per_sample_run)
    watched = monitor_scores(run)
    assert sorted(watched["step"].unique()) == [9, 19, 29] and len(watched) == 3 * 24
    flags = mem_events(run)  # the flags only: the intervention events carry no score
    assert len(flags) and set(flags["event"]) == {"memorization_flag"} and set(flags["action"]) == {"attenuate"}
    assert any(e["event"] == "memorization_intervention" for e in run.events)
    assert memorization_plot(run) is not None
    (per_sample_run.parent / "empty").mkdir()
    (per_sample_run.parent / "empty" / "config.yaml").write_text("name: empty\n")
    with pytest.raises(GovlabError, match="no memorization events in events.jsonl and no memorization.json"):
        memorization_plot(Run(per_sample_run.parent / "empty"))


def test_one_reader_for_the_run_directory(per_sample_run, tmp_path):
    run = RunDir(per_sample_run)
    assert run.config.provenance.granularity == "sample" and run.config.routing.mode == "routed"
    assert [s for s, _ in run.checkpoints] == [15, 30] and all(p.is_file() for _, p in run.checkpoints)
    assert run.memorization["threshold"] == pytest.approx(1e-6) and run.scores is None
    assert run.read_index().sizes["checkpoint"] == 2
    with pytest.raises(GovlabError, match="run directory not found"):
        RunDir(tmp_path / "nowhere")
    with pytest.raises(GovlabError, match=r"not a govlab run directory \(no config.yaml, index.nc or index.parts/\)"):
        RunDir(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    (tmp_path / "scores.json").write_text("[1, 2]")
    with pytest.raises(GovlabError, match="scores.json: expected a JSON object"):
        RunDir(tmp_path).scores
    (tmp_path / "memorization.json").write_text("{}")
    with pytest.raises(GovlabError, match="memorization.json: not a govlab memorization monitor file"):
        RunDir(tmp_path).memorization
