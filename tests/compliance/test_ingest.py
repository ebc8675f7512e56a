"""Ingestion honours C2PA/CAWG training-and-data-mining assertions in training images."""

import json

import pytest
from safetensors import safe_open

from govlab.compliance.credentials import has_c2pa, training_permission
from govlab.hooks import EventLog

NOT_ALLOWED = 3  # images conftest.signed_world marks notAllowed


def test_cheap_check_finds_only_manifests(smoke_dataset, signed_world):
    root, files = signed_world
    signed = {f for names in files.values() for f in names}
    found = {r["file_name"] for r in smoke_dataset.records if has_c2pa(root / r["file_name"])}
    assert found == signed  # every signed image, and none of the world's plain PNGs
    assert not any(has_c2pa(smoke_dataset.root / r["file_name"]) for r in smoke_dataset.records)


def test_permissions_read(signed_world):
    root, files = signed_world
    p = training_permission(root / files["notAllowed"][0])
    assert (p.use, p.problem, p.state, p.signer) == ("notAllowed", None, "Valid", "govlab tests")
    p = training_permission(root / files["constrained"][0])  # the top-level form of the assertion
    assert (p.use, p.constraint_info, p.problem) == ("constrained", "licence on request", None)
    p = training_permission(root / files["corrupt"][0])
    assert p.use is None and "cannot be read" in p.problem
    p = training_permission(root / files["bad_signature"][0])
    assert p.use == "notAllowed" and "claimSignature.mismatch" in p.problem


def test_not_allowed_rejected_and_reported(run, signed_world, smoke_dataset):
    root, files = signed_world
    events = EventLog(run / "events.jsonl").read()
    c2pa_rejected = [e for e in events if e["event"] == "ingestion_rejected" and e["reason"].startswith("C2PA")]
    assert sorted(e["file"] for e in c2pa_rejected) == sorted(files["notAllowed"])
    assert [e["file"] for e in events if e["event"] == "c2pa_constrained"] == files["constrained"]
    warned = {e["file"]: e["problem"] for e in events if e["event"] == "c2pa_warning"}
    assert set(warned) == {*files["corrupt"], *files["bad_signature"]}  # kept, each named
    summary = next(e for e in events if e["event"] == "c2pa_ingestion")
    assert (summary["with_manifest"], summary["rejected"], summary["constrained"], summary["warnings"]) == (6, 3, 1, 2)

    from govlab.provenance.attest import attest

    a = attest(run)  # on a copy: attest writes into the run and re-seals it
    n1 = sum(r["source_id"] == "artist_1" for r in smoke_dataset.records)
    n2 = sum(r["source_id"] == "artist_2" for r in smoke_dataset.records)
    assert a["sources"]["artist_1"]["rejected"] == NOT_ALLOWED and a["sources"]["artist_1"]["trained"] == n1 - NOT_ALLOWED
    assert a["sources"]["artist_2"]["rejected"] == n2  # the registry's opt-out since 0, beside them
    assert a["trained_records"] == len(smoke_dataset.records) - NOT_ALLOWED - n2
    assert a["content_credentials"]["rejected"] == NOT_ALLOWED
    md = (run / "attestation.md").read_text()
    assert "3 rejected (`cawg.ai_generative_training: notAllowed`)" in md and files["corrupt"][0] in md

    # the rejected images never reached training: the checkpoint records the fingerprint of the data
    # the trainer held (records and pixels); it is that of the signed world without the notAllowed
    # images and artist_2, and not that of the same data with the notAllowed images kept
    from govlab.config import from_dict, read_yaml
    from govlab.data.cache import run_dataset

    with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
        trained = dict(json.loads(f.metadata()["govlab_state"])["__dict__"])["data_hash"]
    world = run_dataset(from_dict(read_yaml(run / "config.yaml")), progress=False)
    assert world.root == root
    keep = [i for i, r in enumerate(world.records) if r["source_id"] != "artist_2"]
    admitted = [i for i in keep if world.records[i]["file_name"] not in files["notAllowed"]]
    assert len(admitted) == a["trained_records"] == len(keep) - NOT_ALLOWED
    assert world.subset(admitted).fingerprint() == trained
    assert world.subset(keep).fingerprint() != trained
