"""manifest.json and ``govlab verify``: every artifact hashed, checkpoints chained, edits caught."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from govlab.cli import app
from govlab.errors import GovlabError
from govlab.provenance.manifest import MANIFEST, artifacts, verify, write_manifest


@pytest.fixture
def run(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_manifest_covers_every_artifact_and_chains_checkpoints(run):
    manifest = json.loads((run / MANIFEST).read_text())
    assert set(manifest["files"]) == set(artifacts(run))
    assert {"index.nc", "model.safetensors", "config.yaml", "report.md"} <= set(manifest["files"])
    chain = manifest["checkpoints"]
    assert [c["step"] for c in chain] == [2, 4] and chain[1]["prev"] == chain[0]["chain"]
    assert verify(run) == []


def test_verify_catches_an_edited_byte_in_each_artifact(run):
    files = artifacts(run)
    for f in files:
        path = run / f
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        assert verify(run) == [f"changed: {f}"], f
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    assert verify(run) == []


def test_verify_names_added_and_removed_files_and_a_rewritten_manifest(run):
    (run / "extra.txt").write_text("x")
    (run / "report.md").unlink()
    assert verify(run) == ["added: extra.txt", "removed: report.md"]
    write_manifest(run)
    assert verify(run) == []
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["files"]["extra.txt"] = "0" * 64
    (run / MANIFEST).write_text(json.dumps(manifest))
    problems = verify(run)
    assert "changed: manifest.json (root hash does not match its entries)" in problems
    assert "changed: extra.txt" in problems


def test_cli_verify_exit_code(run):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(run), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout.strip().splitlines()[-1])["ok"] is True
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "\n")
    bad = runner.invoke(app, ["verify", str(run)])
    assert bad.exit_code == 1 and "changed: config.yaml" in bad.stdout


def test_verify_sees_hidden_and_nested_files_and_reports_unfinished_writes(run):
    (run / "checkpoints" / ".payload").write_text("x")
    (run / "checkpoints" / MANIFEST).write_text("{}")
    assert verify(run) == ["added: checkpoints/.payload", "added: checkpoints/manifest.json"]
    write_manifest(run)
    # the manifest is written last: a temporary file of an atomic write is one interrupted (or going on)
    (run / ".index.nc.abc123.tmp").write_text("partial")
    (run / "checkpoints" / ".step_4.safetensors.x1.tmp").write_text("partial")
    unfinished = ["unfinished write: .index.nc.abc123.tmp", "unfinished write: checkpoints/.step_4.safetensors.x1.tmp"]
    assert verify(run) == unfinished
    result = CliRunner().invoke(app, ["verify", str(run)])
    assert result.exit_code == 1 and "unfinished write: .index.nc.abc123.tmp" in result.stdout
    write_manifest(run)  # never sealed as an artifact
    assert ".index.nc.abc123.tmp" not in json.loads((run / MANIFEST).read_text())["files"]
    assert verify(run) == unfinished


@pytest.mark.parametrize("text", ['{"files": null, "checkpoints": [], "root": "x"}',
                                  '{"files": ["a"], "checkpoints": [], "root": "x"}',
                                  '{"files": {}, "checkpoints": {}, "root": "x"}', "\xff\xfe"])
def test_a_malformed_manifest_is_one_clear_error(run, text):
    (run / MANIFEST).write_bytes(text.encode("latin-1"))
    result = CliRunner().invoke(app, ["verify", str(run)])
    assert result.exit_code != 0 and isinstance(result.exception, GovlabError)
    assert "not a govlab manifest" in str(result.exception)


def test_attest_refuses_to_reseal_a_changed_run(run):
    runner = CliRunner()
    assert runner.invoke(app, ["attest", str(run), "--json"]).exit_code == 0
    assert verify(run) == []
    assert runner.invoke(app, ["attest", str(run), "--json"]).exit_code == 0  # attesting again is fine
    path = run / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    before = (run / MANIFEST).read_bytes()
    result = runner.invoke(app, ["attest", str(run)])
    assert isinstance(result.exception, GovlabError) and "changed: model.safetensors" in str(result.exception)
    assert (run / MANIFEST).read_bytes() == before and verify(run) == ["changed: model.safetensors"]
