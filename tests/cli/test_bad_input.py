"""Bad input gets one clear GovlabError naming the file, field or value, and nothing is lost."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from govlab.cli import app
from govlab.config import from_dict, load_config, read_yaml
from govlab.data import WorldConfig, generate_world
from govlab.data.dataset import read_metadata
from govlab.errors import GovlabError
from govlab.hooks import EventLog
from govlab.run import train_run

GOVLAB = str(Path(sys.executable).parent / "govlab")
TINY = WorldConfig(per_artist=2, n_stock=1, per_person=1, dup_groups=1, dup_copies=2)
NOT_UTF8 = "caf\xe9\n".encode("latin-1")


def invoke(*args) -> Exception | None:
    """Run the CLI in-process; the GovlabError it raised (main() prints it as one line), if any."""
    return CliRunner().invoke(app, [str(a) for a in args]).exception


@pytest.mark.parametrize("values, message", [
    ({"train": {"lr": "abc"}}, "train.lr: expected a number, got 'abc'"),
    ({"train": {"lr": 0}}, "lr must be > 0"),
    ({"train": {"steps": -1}}, "steps must be >= 0, got -1"),
    ({"train": {"steps": 1.5}}, "train.steps: expected an integer, got 1.5"),
    ({"train": {"batch_size": 0}}, "batch_size must be >= 1, got 0"),
    ({"train": {"checkpoint_every": 0}}, "checkpoint_every must be >= 1, got 0"),
    ({"eval": {"steps": -1}}, "steps must be >= 1, got -1"),
    ({"eval": {"per_prompt": 0}}, "per_prompt must be >= 1, got 0"),
    ({"model": {"channels": [32, 64]}}, "channels and attention must have one entry per resolution level"),
    ({"model": {"channels": [32, 60, 64]}}, "channels must be positive multiples of norm_groups (8)"),
    ({"model": {"attention": [False, "yes", True]}}, "model.attention[1]: expected true or false"),
    ({"routing": {"slot_sources": "artist_0"}}, "routing.slot_sources: expected a list"),
    ({"routing": {"sequestered": "identity"}}, "routing.sequestered: expected a list"),
    ({"memorization": {"threshold": "high"}}, "memorization.threshold: expected a number or null"),
    ({"provenance": {"enabled": "yes"}}, "provenance.enabled: expected true or false"),
])
def test_config_values_are_checked(values, message):
    with pytest.raises(GovlabError) as e:
        from_dict(values, where="c.yaml")
    assert str(e.value).startswith("c.yaml: ") and message in str(e.value)


def test_numeric_strings_are_numbers_and_every_preset_loads():
    """YAML 1.1 reads ``1e-3`` as a string."""
    assert from_dict({"train": {"lr": "1e-3"}}).train.lr == 0.001
    assert from_dict({"memorization": {"threshold": "0.5", "watch": [1, "a.png"]}}).memorization.watch == (1, "a.png")
    for preset in ("smoke", "demo", "gpu", "routed", "memorization"):
        load_config(preset)


def test_a_bad_config_leaves_the_previous_run_in_place(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: old\n")
    (tmp_path / "c.yaml").write_text("train: {checkpoint_every: 0}\n")
    proc = subprocess.run([GOVLAB, "train", "--config", str(tmp_path / "c.yaml"), "--out", str(run)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "checkpoint_every must be >= 1" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (run / "config.yaml").read_text() == "name: old\n"


def test_a_batch_larger_than_the_data_is_refused_before_clearing(smoke_cfg, tmp_path):
    (tmp_path / "config.yaml").write_text("name: old\n")
    with pytest.raises(GovlabError, match="larger than the dataset"):
        train_run(from_dict({"train": {"batch_size": 100_000}}, base=smoke_cfg), tmp_path, progress=False)
    assert (tmp_path / "config.yaml").read_text() == "name: old\n"


@pytest.mark.parametrize("resume, message", [(False, "is not a directory"), (True, "checkpoint not found")])
def test_train_out_that_is_a_file_is_refused(smoke_cfg, tmp_path, resume, message):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(GovlabError, match=message):
        train_run(smoke_cfg, notes, resume=resume, progress=False)
    assert notes.read_text() == "mine"


def test_train_stores_the_resolved_data_folder(tmp_path, monkeypatch):
    def stored_data(cfg, out, **_):
        raise GovlabError(cfg.data)

    monkeypatch.setattr("govlab.run.train_run", stored_data)
    monkeypatch.chdir(tmp_path)
    assert str(invoke("train", "--preset", "smoke", "--data", "./d")) == str(tmp_path / "d")


@pytest.mark.parametrize("text", ['{"event": "flag", "step": 1}\n{"event": "fl', '{"event": "flag"}\nnot json\n'])
def test_a_damaged_event_log_names_the_file_and_line(tmp_path, text):
    (tmp_path / "events.jsonl").write_text(text)
    with pytest.raises(GovlabError, match=r"events\.jsonl line 2: not valid JSON"):
        EventLog(tmp_path / "events.jsonl").read()


def test_sample_steps_must_be_positive(tmp_path):
    for steps in (0, -1):
        e = invoke("sample", tmp_path, "--prompt", "x", "--steps", steps)
        assert isinstance(e, GovlabError) and f"--steps must be >= 1, got {steps}" in str(e)


def test_world_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metadata.jsonl").write_text("user data\n")
    (tmp_path / "f").write_text("a file")
    for target, message in (("d", "not a generated world"), ("f", "is not a directory")):
        e = invoke("world", tmp_path / target)
        assert isinstance(e, GovlabError) and message in str(e)
    assert (tmp_path / "d" / "metadata.jsonl").read_text() == "user data\n"
    assert (tmp_path / "f").read_text() == "a file"
    generate_world(TINY, tmp_path / "w", progress=False)
    generate_world(TINY, tmp_path / "w", progress=False)  # a world it wrote may be written again


def test_files_that_are_not_utf8_are_named(tmp_path):
    for name in ("c.yaml", "metadata.jsonl", "events.jsonl", "prompts.txt"):
        (tmp_path / name).write_bytes(NOT_UTF8)
    for name, read in (("c.yaml", lambda: read_yaml(tmp_path / "c.yaml")),
                       ("metadata.jsonl", lambda: read_metadata(tmp_path)),
                       ("events.jsonl", lambda: EventLog(tmp_path / "events.jsonl").read())):
        with pytest.raises(GovlabError, match=f"{name}: not UTF-8 text"):
            read()
    e = invoke("lineage", "--target", tmp_path, "--pool", tmp_path, "--prompt-file", tmp_path / "prompts.txt")
    assert isinstance(e, GovlabError) and "prompts.txt: not UTF-8 text" in str(e)


def test_resume_drops_an_append_a_crash_cut_off_but_names_other_damage(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.path.write_text('{"event": "flag", "step": 1}\n{"event": "flag", "step": 5}\n{"event": "fl')
    log.truncate_after(3)
    assert log.read() == [{"event": "flag", "step": 1}]
    log.path.write_text('{"event": "flag", "step": 1}\nnot json\n{"event": "flag", "step": 2}\n')
    with pytest.raises(GovlabError, match=r"events\.jsonl line 2: not valid JSON"):
        log.truncate_after(3)
    assert "not json" in log.path.read_text()  # nothing rewritten
