"""The opt-out registry: rejected at ingestion, zero share from its step on, slot attenuated, attested."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from govlab.config import from_dict
from govlab.errors import GovlabError
from govlab.hooks import EventLog
from govlab.provenance import ProvenanceIndex, attest, read_optouts
from govlab.run import train_run


def test_optouts_are_honoured_with_proof(optout_run):
    events = EventLog(optout_run / "events.jsonl").read()
    rejected = [e for e in events if e["event"] == "ingestion_rejected"]
    assert rejected and all(e["source_id"] == "artist_1" for e in rejected)
    assert [e["step"] for e in events if e["event"] == "opt_out"] == [2]
    assert [e["source_id"] for e in events if e["event"] == "opt_out_attenuated"] == ["artist_0"]
    index = ProvenanceIndex.open(optout_run)
    g = index.ds["grad_norm_sq"]
    assert float(g.sel(source="artist_1").sum()) == 0.0
    assert float(g.sel(source="artist_0", checkpoint=2).sum()) > 0.0  # trained before its opt-out
    assert float(g.sel(source="artist_0", checkpoint=4).max()) == 0.0  # exactly 0 from step 2 on
    assert index.zero_since("artist_0", 2)["zero_influence"] is True
    weights = load_file(str(optout_run / "model.safetensors"))
    ups = [v for k, v in weights.items() if k.startswith("slots.") and k.endswith(".up.artist_0")]
    assert ups and all(float(v.abs().max()) == 0.0 for v in ups)


def test_attestation(optout_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(optout_run, run)
    a = attest(run)
    assert a["rejected_sources"] == ["artist_1"]
    assert a["sources"]["artist_1"]["trained"] == 0 and a["sources"]["artist_0"]["trained"] > 0
    proofs = {o["source_id"]: o for o in a["opt_outs"]}
    assert proofs["artist_0"]["proof"]["zero_influence"] is True and proofs["artist_0"]["attenuated"]
    assert proofs["artist_1"]["proof"]["max_grad_norm_sq"] == 0.0
    assert json.loads((run / "attestation.json").read_text()) == a
    assert "| artist_0 | 2 | all | True | 0.0 | True |" in (run / "attestation.md").read_text()


def test_per_sample_index_attests_a_source_rejected_at_ingestion(tiny_cfg, tmp_path):
    """A source with no rows in a per-sample index (rejected at step 0) still has its zero proof."""
    registry = tmp_path / "optouts.jsonl"
    registry.write_text('{"source_id": "artist_1", "since": 0}\n')
    cfg = from_dict({"provenance": {"optouts": str(registry), "granularity": "sample"},
                     "train": {"steps": 2}}, base=tiny_cfg)
    train_run(cfg, tmp_path / "run", progress=False)
    index = ProvenanceIndex.open(tmp_path / "run")
    assert "artist_1" in index.sources and "artist_1" not in set(index.ds["source_id"].values)
    assert index.bands_of("artist_1")["steps_seen"] == [0]
    a = attest(tmp_path / "run")
    proof = {o["source_id"]: o for o in a["opt_outs"]}["artist_1"]["proof"]
    assert proof["max_grad_norm_sq"] == 0.0 and proof["zero_influence"] is True
    assert index.bands_of("artist_0")["steps_seen"][0] > 0


def test_unknown_source_is_one_clear_error_and_nothing_is_overwritten(tiny_cfg, optout_run, tmp_path):
    registry = tmp_path / "optouts.jsonl"
    registry.write_text('{"source_id": "nobody", "since": 0}\n')
    with pytest.raises(GovlabError, match=r"optouts.jsonl:1: opt-out for unknown source 'nobody'"):
        read_optouts(registry, ["artist_0"])
    run = tmp_path / "run"
    shutil.copytree(optout_run, run)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(GovlabError, match="unknown source 'nobody'"):
        train_run(from_dict({"provenance": {"optouts": str(registry)}}, base=tiny_cfg), run, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


@pytest.mark.parametrize("line, message", [
    ('{"source_id": "artist_0", "since": -1}', "field 'since' must be a training step"),
    ('{"source_id": "artist_0", "since": 0, "scope": "forever"}', "field 'scope' must be one of"),
    ('{"source_id": "artist_0", "scope": "all"}', "optouts.jsonl:1: missing field 'since'"),
    ('{"since": 3}', "missing field 'source_id'"),
    ('{"source_id": "artist_0", "since": 0, "scpoe": "all"}', "unknown field 'scpoe'"),
    ('not json', "not valid JSON"),
    ('{"source_id": "artist_\xff", "since": 0}', "not UTF-8"),
])
def test_bad_registry_lines(tmp_path, line, message):
    registry = tmp_path / "optouts.jsonl"
    registry.write_bytes((line + "\n").encode("latin-1"))
    with pytest.raises(GovlabError, match=message):
        read_optouts(registry, ["artist_0"])


def _fit_with_registry(cfg, dataset, out, registry, **kw):
    from govlab.provenance.hook import attach as attach_provenance
    from govlab.routing import attach
    from govlab.train import Trainer

    cfg = from_dict({"provenance": {"optouts": str(registry)}}, base=cfg)
    data, routing = attach(cfg, dataset)
    data, provenance = attach_provenance(cfg, data, dataset.sources)
    return Trainer(cfg, data, out, hooks=[*routing, *provenance], progress=False).fit(**kw)


def test_resume_takes_an_opt_out_from_its_checkpoint_on_and_refuses_one_in_the_past(tiny_cfg, smoke_dataset,
                                                                                    tmp_path):
    registry, run = tmp_path / "optouts.jsonl", tmp_path / "run"
    registry.write_text('{"source_id": "artist_1", "since": 0}\n{"source_id": "artist_2", "since": 5}\n')
    _fit_with_registry(tiny_cfg, smoke_dataset, run, registry, until=2)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for edit, message in [
        ('{"source_id": "artist_1", "since": 0}\n{"source_id": "artist_0", "since": 1}\n',
         "source 'artist_0' has an opt-out since step 1, but the run was trained up to its checkpoint at "
         "step 2 with no opt-out"),
        ('{"source_id": "artist_0", "since": 2}\n', "source 'artist_1' has no opt-out"),
        ('{"source_id": "artist_1", "since": 3}\n', "source 'artist_1' has an opt-out since step 3"),
    ]:
        registry.write_text(edit)
        with pytest.raises(GovlabError, match=f"optouts.jsonl: {message}"):
            _fit_with_registry(tiny_cfg, smoke_dataset, run, registry, resume=True)
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched
    # from the checkpoint on: an opt-out added at its step, a future one moved, a scope changed
    registry.write_text('{"source_id": "artist_1", "since": 0, "scope": "all"}\n'
                        '{"source_id": "artist_0", "since": 2}\n{"source_id": "artist_2", "since": 3}\n')
    _fit_with_registry(tiny_cfg, smoke_dataset, run, registry, resume=True)
    assert [(e["step"], e["source_id"]) for e in EventLog(run / "events.jsonl").read()
            if e["event"] == "opt_out"] == [(2, "artist_0"), (3, "artist_2")]
    assert (run / "optouts.jsonl").read_text() == registry.read_text()
    index = ProvenanceIndex.open(run, check_model=False)
    assert index.zero_since("artist_0", 2)["zero_influence"] is True
    assert float(index.ds["grad_norm_sq"].sel(source="artist_0", checkpoint=2).sum()) > 0.0


def test_the_registry_is_read_once_and_what_was_parsed_is_kept(tiny_cfg, smoke_dataset, tmp_path, monkeypatch):
    """An edit racing the run's start cannot make the run keep a registry other than the one applied."""
    from pathlib import Path
    from types import SimpleNamespace

    from govlab.provenance.hook import attach as attach_provenance

    registry = tmp_path / "optouts.jsonl"
    applied = '{"source_id": "artist_1", "since": 3}\n'
    registry.write_text(applied)
    read_text = Path.read_text

    def racing(self, *args, **kwargs):
        text = read_text(self, *args, **kwargs)
        if self == registry:
            self.write_text('{"source_id": "artist_2", "since": 1}\n')  # edited right after the read
        return text

    monkeypatch.setattr(Path, "read_text", racing)
    cfg = from_dict({"provenance": {"optouts": str(registry)}}, base=tiny_cfg)
    hook = attach_provenance(cfg, smoke_dataset, smoke_dataset.sources)[1][0]
    assert [(o.source_id, o.since) for o in hook.optouts] == [("artist_1", 3)]
    hook.on_start(SimpleNamespace(out=tmp_path, step=1))
    assert read_text(tmp_path / "optouts.jsonl") == hook.text == applied


@pytest.mark.parametrize("mode, source", [("off", "artist_0"), ("routed", "stockco")])
def test_scope_all_without_a_slot_is_refused_before_anything_is_written(tiny_cfg, tmp_path, mode, source):
    registry = tmp_path / "optouts.jsonl"
    registry.write_text(f'{{"source_id": "{source}", "since": 2, "scope": "all"}}\n')
    cfg = from_dict({"routing": {"mode": mode}, "provenance": {"optouts": str(registry)}}, base=tiny_cfg)
    with pytest.raises(GovlabError, match=rf"optouts.jsonl: source '{source}' opts out with scope 'all'.*"
                                          rf"no slot \(routing.mode: {mode}"):
        train_run(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_scope_all_from_step_0_needs_no_slot(tiny_cfg, smoke_dataset, tmp_path):
    """A source rejected at ingestion never trained: there is nothing for a slot to hold."""
    from govlab.provenance.hook import attach as attach_provenance

    registry = tmp_path / "optouts.jsonl"
    registry.write_text('{"source_id": "stockco", "since": 0, "scope": "all"}\n')
    cfg = from_dict({"routing": {"mode": "off"}, "provenance": {"optouts": str(registry)}}, base=tiny_cfg)
    data, hooks = attach_provenance(cfg, smoke_dataset, smoke_dataset.sources)
    assert "stockco" not in data.sources and hooks[0].optouts[0].scope == "all"


def test_shipped_example_config_and_registry_load(monkeypatch):
    """data/provenance.example.yaml and its registry attach to the routed preset's world, as the
    command in data/README.md runs them (from the repository root)."""
    from pathlib import Path

    from govlab.config import load_config
    from govlab.data.cache import run_dataset
    from govlab.provenance.hook import attach as attach_provenance
    from govlab.routing.hook import attach

    monkeypatch.chdir(Path(__file__).parents[2])
    cfg = load_config("routed", "data/provenance.example.yaml")
    dataset = run_dataset(cfg, progress=False)
    optouts = read_optouts(cfg.provenance.optouts, dataset.sources)
    assert [(o.source_id, o.since, o.scope) for o in optouts] == [("artist_5", 0, "training"), ("artist_3", 400, "all")]
    data, _ = attach(cfg, dataset)
    admitted, hooks = attach_provenance(cfg, data, dataset.sources)
    assert hooks and {r["source_id"] for r in admitted.records} == set(dataset.sources) - {"artist_5"}
