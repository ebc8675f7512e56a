import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from govlab.config import from_dict, load_config
from govlab.errors import GovlabError
from govlab.hooks import StepContext
from govlab.memorization.config import MemorizationConfig
from govlab.memorization.monitor import MemorizationMonitor, attach, read_monitor
from govlab.train import Trainer


def trainer(cfg, dataset, out):
    return Trainer(cfg, dataset, out, hooks=attach(cfg, dataset), progress=False)


def flags(out):
    return [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "memorization_flag"]


def test_monitor_only_leaves_training_unchanged(mem_cfg, smoke_cfg, smoke_dataset, tmp_path):
    cfg = mem_cfg(intervention="none", threshold=1e-9)
    plain = Trainer(replace(cfg, memorization=smoke_cfg.memorization), smoke_dataset, tmp_path / "p",
                    progress=False).fit()
    watched = trainer(cfg, smoke_dataset, tmp_path / "m").fit()
    for a, b in zip(plain.model.parameters(), watched.model.parameters()):
        assert torch.equal(a, b)
    mon = watched.hooks[0]
    assert set(mon.latest_scores) == set(range(len(smoke_dataset))) and len(mon.flagged) == len(smoke_dataset)
    events = flags(tmp_path / "m")
    assert {"step", "sample", "score", "threshold", "action"} <= set(events[0])
    assert all(e["action"] == "none" and e["score"] > e["threshold"] for e in events)
    saved = read_monitor(tmp_path / "m")
    assert saved["latest_scores"] == pytest.approx(mon.latest_scores) and saved["threshold"] == 1e-9
    assert [h["step"] for h in saved["history"]] == [3, 7, 11]


def test_calibrated_threshold_flags_only_outliers(mem_cfg, smoke_dataset, tmp_path):
    from govlab.memorization.monitor import calibrate

    t = trainer(mem_cfg(intervention="none", calibrate_k=1.0), smoke_dataset, tmp_path).fit()  # k=1: some flag
    mon, k = t.hooks[0], t.cfg.memorization.calibrate_k
    assert [h["step"] for h in mon.history] == [3, 7, 11]
    before: set[int] = set()
    for h in mon.history:  # watch: all, so each check rescored every row
        per_caption = {mon.keys[r]: s for r, s in h["scores"].items()}
        assert h["threshold"] == pytest.approx(max(calibrate(list(per_caption.values()), k), 0.0))
        above = {r for r, s in h["scores"].items() if s > h["threshold"]}
        assert {r for r, step in mon.flagged.items() if step == h["step"]} == above - before
        assert len(above) < len(smoke_dataset) / 2  # outliers only
        before |= above
    assert mon.flagged  # the check above is not vacuous


def test_calibrated_regeneration_threshold_stays_between_the_criteria(smoke_dataset):
    mon = MemorizationMonitor(MemorizationConfig(mode="monitor", detector="regeneration"), smoke_dataset)
    n = len(smoke_dataset)
    mon.latest_scores = dict.fromkeys(range(n), 0.0)  # median + k MAD is 0: any positive score would flag
    assert mon.current_threshold() == pytest.approx(1 / 3)
    mon.latest_scores = {r: 0.2 if r % 3 == 0 else 0.9 for r in range(n)}  # median + k MAD is 0.9
    assert mon.current_threshold() == pytest.approx(2 / 3)  # capped: the extraction criterion always flags
    noise = MemorizationMonitor(MemorizationConfig(mode="monitor", detector="noise"), smoke_dataset)
    noise.latest_scores = dict.fromkeys(range(n), 0.0)
    assert noise.current_threshold() == 0.0


def test_each_detector_calibrates_with_its_own_k_unless_one_is_given(smoke_dataset):
    from govlab.memorization.monitor import calibrate

    scores = {r: 0.4 + 0.002 * (r % 7) for r in range(len(smoke_dataset))}  # median + 3 or 6 MAD: in (1/3, 2/3)
    thresholds = {}
    for detector, k in (("noise", 3.0), ("noise", 1.5), ("regeneration", 6.0), ("regeneration", 3.0)):
        default = k == {"noise": 3.0, "regeneration": 6.0}[detector]
        mon = MemorizationMonitor(MemorizationConfig(mode="monitor", detector=detector,
                                                     calibrate_k=None if default else k), smoke_dataset)
        mon.latest_scores = dict(scores)
        per_key = list({mon.keys[r]: s for r, s in mon.latest_scores.items()}.values())
        thresholds[detector, k] = mon.current_threshold()
        assert thresholds[detector, k] == pytest.approx(calibrate(per_key, k))
    assert 1 / 3 < thresholds["regeneration", 6.0] < 2 / 3  # not clamped: the default k is what is tested
    assert len({round(t, 9) for t in thresholds.values()}) == 3  # noise 3 and regeneration 3 coincide
    with pytest.raises(ValueError, match="calibrate_k"):
        MemorizationConfig(calibrate_k=0)


def _ctx(t, rows):
    idx = torch.tensor(rows)
    return StepContext(step=0, indices=idx, records=[t.dataset.records[i] for i in rows], x0=t.images[idx],
                       tokens=t.tokens[idx].clone(), noise=torch.zeros(len(rows), 3, 16, 16),
                       timesteps=torch.zeros(len(rows), dtype=torch.long), weights=torch.ones(len(rows)), trainer=t)


@pytest.mark.parametrize("intervention, kw", [("attenuate", {"factor": 0.25}), ("regularize", {"strength": 1.0}),
                                              ("regularize", {"regularize": "embedding", "strength": 1.0})])
def test_interventions_touch_only_flagged_samples(intervention, kw, mem_cfg, smoke_dataset, tmp_path):
    t = trainer(mem_cfg(intervention=intervention, **kw), smoke_dataset, tmp_path)
    mon = t.hooks[0]
    mon.on_start(t)
    mon.flagged = {1: 0, 3: 0}
    ctx = _ctx(t, [0, 1, 2, 3])
    before = ctx.tokens.clone()
    mon.before_forward(ctx)
    emb = t.model.text(ctx.tokens)
    mon.before_backward(ctx)
    changed = (ctx.tokens != before).any(1).tolist()
    if intervention == "attenuate":
        assert ctx.weights.tolist() == [1, 0.25, 1, 0.25] and not any(changed)
    elif kw.get("regularize") == "embedding":
        clean = t.model.text(ctx.tokens)  # mask cleared: no noise any more
        assert [not torch.allclose(a, b) for a, b in zip(emb, clean)] == [False, True, False, True]
    else:
        assert changed == [False, True, False, True] and ctx.weights.tolist() == [1, 1, 1, 1]
    assert mon.applied[mon.action] == {1, 3}


def test_drop_excludes_flagged_samples_from_later_epochs(mem_cfg, smoke_dataset, tmp_path):
    t = trainer(mem_cfg(intervention="drop", watch=(0, 1, "images/000005.png"), threshold=1e-9),
                smoke_dataset, tmp_path).fit()
    assert t.sampler.excluded == {0, 1, 5}
    assert {e["sample"] for e in flags(tmp_path)} == {0, 1, 5}
    assert all(e["action"] == "drop" for e in flags(tmp_path))


def test_a_flag_covers_every_unwatched_copy_of_the_flagged_sample(mem_cfg, smoke_dataset, tmp_path):
    copies = [i for i, r in enumerate(smoke_dataset.records) if r.get("duplicate_group", -1) == 0]
    watched = copies[0]
    t = trainer(mem_cfg(intervention="drop", watch=(watched,), threshold=1e-9), smoke_dataset, tmp_path).fit()
    assert len(copies) > 1 and t.sampler.excluded == set(copies)
    events = {e["sample"]: e for e in flags(tmp_path)}
    assert set(events) == set(copies) and "copy_of" not in events[watched]
    assert all(events[c]["copy_of"] == watched and events[c]["score"] == events[watched]["score"]
               for c in copies[1:])


def test_deduplicate_keeps_one_row_of_each_flagged_image(mem_cfg, smoke_dataset, tmp_path):
    copies = [i for i, r in enumerate(smoke_dataset.records) if r.get("duplicate_group", -1) == 0]
    single = next(i for i, r in enumerate(smoke_dataset.records) if r.get("duplicate_group", -1) < 0)
    t = trainer(mem_cfg(intervention="deduplicate", watch=(copies[-1], single), threshold=1e-9), smoke_dataset,
                tmp_path).fit()
    assert len(copies) > 2 and t.sampler.excluded == set(copies[1:])  # the lowest copy trains on; single too
    events = {e["sample"]: e for e in flags(tmp_path)}
    assert set(events) == {*copies, single} and all(e["action"] == "deduplicate" for e in events.values())
    assert sorted(r for r, e in events.items() if not e["excluded"]) == sorted([copies[0], single])


def test_deduplicate_keeps_each_image_of_a_shared_caption_and_skips_rows_already_excluded(mem_cfg, smoke_dataset):
    mon = MemorizationMonitor(mem_cfg(intervention="deduplicate").memorization, smoke_dataset)
    copies = [i for i, r in enumerate(smoke_dataset.records) if r.get("duplicate_group", -1) == 0]
    other = next(i for i, r in enumerate(smoke_dataset.records) if r.get("duplicate_group", -1) < 0)
    mon.keys[other] = mon.keys[copies[0]]  # a caption shared by two different images (noise detector keys)
    rows = [*copies, other]
    assert sorted(mon.duplicates(rows)) == copies[1:]  # one row of each image stays
    assert sorted(mon.duplicates(rows, excluded={copies[0]})) == sorted([copies[0], *copies[2:]])
    assert sorted(mon.duplicates(rows, excluded=set(copies))) == copies  # nothing left to keep of that image


def test_resume_restores_the_monitor(mem_cfg, smoke_dataset, tmp_path):
    cfg = mem_cfg(intervention="attenuate", watch="rotating", watch_size=10, threshold=1e-9)
    straight = trainer(cfg, smoke_dataset, tmp_path / "a").fit()
    trainer(cfg, smoke_dataset, tmp_path / "b").fit(until=6)
    resumed = trainer(cfg, smoke_dataset, tmp_path / "b").fit(resume=True)
    a, b = straight.hooks[0], resumed.hooks[0]
    assert a.latest_scores == pytest.approx(b.latest_scores) and a.flagged == b.flagged
    assert a.cursor == b.cursor and a.threshold == pytest.approx(b.threshold)
    assert a.history == b.history and a.applied == b.applied and len(a.history) > 1
    assert (tmp_path / "a" / "events.jsonl").read_text() == (tmp_path / "b" / "events.jsonl").read_text()


def test_monitor_state_keeps_its_per_row_figures_out_of_the_checkpoint_header(mem_cfg, smoke_dataset, tmp_path):
    """Scores of many rows over many checks go into tensors: the JSON header safetensors caps stays
    small, and the state comes back exactly."""
    from safetensors import safe_open

    from govlab.checkpoint import load_state, save_state

    monitor = MemorizationMonitor(mem_cfg().memorization, smoke_dataset)
    rng = np.random.default_rng(0)
    rows = 20_000
    monitor.history = [{"step": s, "threshold": float(rng.random()),
                        "scores": {int(r): float(v) for r, v in zip(rng.permutation(rows), rng.random(rows))}}
                       for s in range(10)]
    monitor.history += [{"step": s, "threshold": 0.5, "scores": {s % rows: 0.25}} for s in range(10, 5000)]
    monitor.latest_scores = dict(monitor.history[-1]["scores"])
    monitor.flagged = {int(r): 3 for r in rng.permutation(rows)[:500]}
    monitor.applied = {"attenuate": set(range(0, rows, 7))}
    save_state(tmp_path / "state.safetensors", {"hooks": [monitor.state_dict()]})
    with safe_open(str(tmp_path / "state.safetensors"), "pt") as f:
        assert len(f.metadata()["govlab_state"]) < 5_000
    restored = MemorizationMonitor(mem_cfg().memorization, smoke_dataset)
    restored.load_state_dict(load_state(tmp_path / "state.safetensors")["hooks"][0])
    assert restored.history == monitor.history and restored.latest_scores == monitor.latest_scores
    assert list(restored.history[3]["scores"]) == list(monitor.history[3]["scores"])  # row order kept
    assert all(type(r) is int and type(v) is float for r, v in restored.history[-1]["scores"].items())
    assert restored.flagged == monitor.flagged and restored.applied == monitor.applied


def test_watch_list_naming_unknown_samples_is_one_error(mem_cfg, smoke_dataset, tmp_path):
    with pytest.raises(GovlabError, match=r"memorization.watch names unknown samples \[9999, 'nope.png'\]"):
        MemorizationMonitor(mem_cfg(watch=(1, 9999, "nope.png")).memorization, smoke_dataset)
    from govlab.run import train_run

    (tmp_path / "config.yaml").write_text("name: earlier\n")  # an earlier run: kept, the refusal comes first
    (tmp_path / "report.md").write_text("an earlier run")
    with pytest.raises(GovlabError, match="unknown samples"):
        train_run(mem_cfg(watch=(9999,)), tmp_path, progress=False)
    assert (tmp_path / "report.md").read_text() == "an earlier run"


@pytest.mark.parametrize("section, message", [
    ({"detector": "regeneration", "threshold": 1.5}, "threshold 1.5 is outside the regeneration score range"),
    ({"threshold": -0.1}, "threshold -0.1 is outside the noise score range"),
    ({"intervention": "nope"}, "intervention must be one of"),
])
def test_bad_monitor_config_is_one_error(section, message):
    with pytest.raises(GovlabError, match=message):
        from_dict({"memorization": section}, where="cfg.yaml")


def test_default_config_hash_is_unchanged_by_the_section():
    cfg = load_config("routed")  # a preset without the monitor (the demo preset has it on)
    assert cfg.hash() == from_dict({"memorization": {"mode": "off"}}, base=cfg).hash()
    # a run written when calibrate_k defaulted to 6 (its config.yaml spells it out) keeps its hash
    assert cfg.hash() == from_dict({"memorization": {"mode": "off", "calibrate_k": 6.0}}, base=cfg).hash()
    assert cfg.hash() != from_dict({"memorization": {"mode": "monitor"}}, base=cfg).hash()


def test_a_monitored_run_logs_flags_and_interventions(smoke_run):
    events = [json.loads(line) for line in (smoke_run / "events.jsonl").read_text().splitlines()]
    flagged = {e["sample"] for e in events if e["event"] == "memorization_flag"}
    applied = [e for e in events if e["event"] == "memorization_intervention"]
    assert flagged and applied and all(e["action"] == "attenuate" for e in applied)
    assert set().union(*(e["samples"] for e in applied)) <= flagged
    assert read_monitor(smoke_run)["flagged"].keys() == flagged


def test_experiment_command_refuses_an_unknown_intervention(tmp_path, capsys):
    from govlab.studies.memorization import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "forget"])
    assert e.value.code != 0 and "unknown intervention 'forget'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
