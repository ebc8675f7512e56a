"""``govlab attest --format eu-summary|croissant``: the EU template and Croissant 1.1, traced to the run."""

import json
import logging
from pathlib import Path

import xarray as xr
import yaml
from typer.testing import CliRunner

from govlab.cli import app
from govlab.compliance.eu_summary import SECTIONS
from govlab.data.dataset import read_metadata

NOT_ALLOWED = 3  # images conftest.signed_world marks notAllowed


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_croissant_validates_and_loads(run, signed_world):
    import mlcroissant as mlc

    root, files = signed_world
    last_json(invoke("attest", run, "--format", "croissant", "--json"))
    assert invoke("verify", run).exit_code == 0  # written into the run and re-sealed
    logging.getLogger("absl").setLevel(logging.ERROR)
    ds = mlc.Dataset(jsonld=run / "croissant.json")
    assert not ds.metadata.ctx.issues.errors, ds.metadata.ctx.issues.report()
    records = list(ds.records("training"))
    metadata = read_metadata(root)
    assert len(records) == len(metadata)
    refused = {r["training/file_name"].decode(): r["training/rejection_reason"].decode()
               for r in records if not r["training/admitted"]}
    expected = set(files["notAllowed"]) | {m["file_name"] for m in metadata if m["source_id"] == "artist_2"}
    assert set(refused) == expected
    assert all(refused[f].startswith("C2PA") for f in files["notAllowed"])
    doc = json.loads((run / "croissant.json").read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    assert {s["name"] for s in doc["prov:wasDerivedFrom"]} == {m["source_id"] for m in metadata}
    assert all(doc[k] for k in ("rai:dataCollection", "rai:dataPreprocessingProtocol",
                                "rai:personalSensitiveInformation", "rai:dataLimitations"))
    since = {r["training/source_id"].decode(): r["training/opt_out_since_step"] for r in records}
    assert since["artist_0"] == 2 and since["artist_2"] == 0 and since["artist_1"] == -1


def source_exists(run: Path, source: str, cfg: dict) -> bool:
    """A field's trace names a run file (and a config key that resolves) or the data's metadata.jsonl."""
    head = source.split(" (")[0]
    file, _, key = head.partition("#")
    if file.endswith("metadata.jsonl"):
        return Path(file).is_file() or file.startswith("the world")
    if not ((run / file).exists() or file == "events.jsonl"):
        return False
    if file == "config.yaml" and key:
        node = cfg
        for part in key.split("."):
            if part not in node:
                return False
            node = node[part]
    return True


def test_eu_summary_every_section_traced(run, signed_world, smoke_dataset):
    r = last_json(invoke("attest", run, "--format", "eu-summary", "--json"))
    ids = [sid for sid, _, _ in SECTIONS]
    assert sorted(r["sections_filled"] + r["sections_for_a_person"]) == sorted(ids)
    assert not set(r["sections_filled"]) & set(r["sections_for_a_person"])
    assert invoke("verify", run).exit_code == 0
    e = json.loads((run / "eu-summary.json").read_text())
    assert [s["id"] for s in e["sections"]] == ids
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for s in e["sections"]:
        for name, f in s["fields"].items():
            if f["filled_by"] == "govlab":
                assert f["source"] and all(source_exists(run, x, cfg) for x in f["source"]), (s["id"], name, f)
            else:
                assert f["value"] is None and f["what"], (s["id"], name)
    md = (run / "eu-summary.md").read_text()
    assert all(f"### {sid} " in md for sid in ids) and "**for a person**" in md

    fields = {s["id"]: s["fields"] for s in e["sections"]}
    # figures against what the run's inputs say, computed here independently
    metadata = read_metadata(signed_world[0])
    n2 = sum(m["source_id"] == "artist_2" for m in metadata)
    admitted = len(metadata) - NOT_ALLOWED - n2
    assert f"({admitted} images)" in fields["1.3"]["training_data_size"]["value"]["image"]
    registry = {o["source_id"]: o for o in fields["3.1"]["opt_out_registry"]["value"]}
    with xr.open_dataset(run / "index.nc") as ds:
        steps = [int(c) for c in ds["checkpoint"].values]
        starts = [0, *steps[:-1]]
        after = [c for c, s in zip(steps, starts) if s >= 2]
        g = ds["grad_norm_sq"].sel(source="artist_0", checkpoint=after)
        assert float(g.max()) == 0.0 and float(ds["grad_norm_sq"].sel(source="artist_0").max()) > 0
    assert registry["artist_0"]["max_grad_norm_sq_since"] == 0.0 and registry["artist_0"]["zero_influence"]
    assert registry["artist_2"]["rejected_at_ingestion"] == n2
    cc = fields["3.1"]["content_credentials"]["value"]
    assert cc["rejected_not_allowed"] == NOT_ALLOWED and len(cc["kept_with_warning"]) == 2
    assert fields["3.2"]["rejected_at_ingestion"]["value"]["records"] == NOT_ALLOWED + n2
    assert fields["1.2"]["model_dependencies"]["value"].startswith("none: trained from scratch")


def test_attest_without_provenance(run):
    (run / "index.nc").unlink()
    (run / "manifest.json").unlink()
    r = last_json(invoke("attest", run, "--format", "eu-summary", "--json"))
    assert any("no provenance index" in t for t in r["statements"])
    assert any("not sealed" in t for t in r["statements"])
    assert "no provenance index" in (run / "eu-summary.md").read_text()
    bad = invoke("attest", run, "--format", "pdf")
    assert bad.exit_code != 0 and "unknown --format 'pdf'" in str(bad.exception)
    bad = invoke("attest", run.parent / "nothing")
    assert bad.exit_code != 0 and "not a govlab run directory" in str(bad.exception)
