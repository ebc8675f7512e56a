"""``govlab query``, ``attribute``, ``attest``: one JSON object on the last line, clear errors."""

import json
import shutil

import pytest
import torch
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
    from govlab.attribution.probe import model_output, prompt_probe
    from govlab.models.diffusion import TextToImage

    def attribute(prompt):
        return last_json(CliRunner().invoke(app, ["attribute", str(run), "--prompt", prompt, "-n", "2",
                                                  "--steps", "4", "--json"]))

    def ablated(prompt, source):
        """Independent ground truth: output on the same probe minus output with the source's slot
        weights (every layer, by parameter name) set to 0."""
        model = TextToImage.load(run / "model.safetensors")
        probe = prompt_probe(model, prompt, n_images=2, seed=0, steps=4)
        base = model_output(model, probe)
        slot = [p for n, p in model.named_parameters() if n.startswith("slots.") and n.endswith(f".{source}")]
        assert slot, source
        with torch.no_grad():
            for p in slot:
                p.zero_()
        return base - model_output(model, probe)

    # a caption as the world writes them ('..., by artist 2'): only the named artist's slot is switched
    # on, so only it scores, by exactly what removing its weights changes
    prompt = "a red circle center, by artist 2"
    r = attribute(prompt)
    assert r["method"] == "structural" and r["time_s"] > 0
    scores = [s["score"] for s in r["sources"]]
    assert scores == sorted(scores, reverse=True)
    by = {s["source"]: s["score"] for s in r["sources"]}
    score = by.pop("artist_2")  # rounded to 8 decimals
    assert score != 0.0 and score == pytest.approx(ablated(prompt, "artist_2"), abs=1e-8), r["sources"]
    assert set(by) == {"artist_0", "artist_3", "artist_4", "artist_5"} and set(by.values()) == {0.0}
    # artist 0 named: its slot is switched on but was attenuated to 0 at its opt-out (its up weights
    # are 0 in the saved model), so ablating it changes nothing
    up = [p for n, p in TextToImage.load(run / "model.safetensors").named_parameters()
          if n.startswith("slots.") and n.endswith(".up.artist_0")]
    assert up and all(float(p.abs().max()) == 0.0 for p in up)
    by = {s["source"]: s["score"] for s in attribute("a red circle center, by artist 0")["sources"]}
    assert by["artist_0"] == 0.0
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
