"""``govlab query``, ``attribute``, ``attest``: one JSON object on the last line, clear errors."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from govlab.cli import app


def last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def run(optout_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(optout_run, out)
    return out


def test_query(run):
    runner = CliRunner()
    summary = last_json(runner.invoke(app, ["query", str(run), "--json"]))
    assert summary["granularity"] == "cohort" and summary["checkpoints"] == [2, 4]
    bands = last_json(runner.invoke(app, ["query", str(run), "--source", "artist_2", "--json"]))
    assert bands["bands"]["slot:artist_2"]["grad_norm_sq"] > 0
    sources = last_json(runner.invoke(app, ["query", str(run), "--band", "slot:artist_2", "--json"]))
    assert sources["sources"][0]["source"] == "artist_2"
    cell = last_json(runner.invoke(app, ["query", str(run), "--source", "artist_0", "--band", "outer", "--json"]))
    assert cell["grad_norm_sq"][1] == 0.0
    bad = runner.invoke(app, ["query", str(run), "--source", "nobody"])
    assert bad.exit_code != 0 and "no source 'nobody'" in str(bad.exception)


def test_attribute_structural(run):
    r = last_json(CliRunner().invoke(app, ["attribute", str(run), "--prompt", "a red circle", "-n", "2",
                                           "--steps", "4", "--json"]))
    assert r["method"] == "structural" and r["time_s"] > 0
    scores = [s["score"] for s in r["sources"]]
    assert scores == sorted(scores, reverse=True)
    by = {s["source"]: s["score"] for s in r["sources"]}
    assert by["artist_0"] == 0.0  # its slot was attenuated to 0 at its opt-out: ablating it changes nothing
    bad = CliRunner().invoke(app, ["attribute", str(run), "--prompt", "x", "--method", "psychic"])
    assert bad.exit_code != 0 and "unknown attribution method 'psychic'" in str(bad.exception)


def test_attest_reseals_the_manifest(run):
    runner = CliRunner()
    a = last_json(runner.invoke(app, ["attest", str(run), "--json"]))
    assert (run / "attestation.md").is_file() and a["rejected_sources"] == ["artist_1"]
    assert runner.invoke(app, ["verify", str(run)]).exit_code == 0


@pytest.mark.parametrize("args, message", [(["-n", "0"], "-n must be >= 1"), (["--steps", "0"], "--steps must be >= 1")])
def test_attribute_bad_counts(run, args, message):
    bad = CliRunner().invoke(app, ["attribute", str(run), "--prompt", "a red circle", *args])
    assert bad.exit_code != 0 and message in str(bad.exception)
