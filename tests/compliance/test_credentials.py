"""Generated images carry a signed C2PA manifest; ``govlab verify-image`` reads it back."""

import io
import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from govlab.cli import app
from govlab.io import sha256_file


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def splice_pixels(png: bytes) -> bytes:
    """The same PNG with one pixel changed, every other chunk (the C2PA one too) kept."""
    def chunks(b):
        i, out = 8, []
        while i < len(b):
            n = int.from_bytes(b[i:i + 4], "big")
            out.append((b[i + 4:i + 8], b[i:i + 12 + n]))
            i += 12 + n
        return out

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).copy()
    a[0, 0, 0] ^= 1
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    idat = b"".join(c for t, c in chunks(buf.getvalue()) if t == b"IDAT")
    out, done = [png[:8]], False
    for t, c in chunks(png):
        if t != b"IDAT":
            out.append(c)
        elif not done:
            out.append(idat)
            done = True
    return b"".join(out)


def test_sample_reads_back_and_an_edit_fails(run, tmp_path):
    out = tmp_path / "s.png"
    r = invoke("sample", run, "--prompt", "a red circle center, by artist 3", "-n", "2", "--steps", "2",
               "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert last_json(r)["self_signed"] is True
    ok = invoke("verify-image", out, "--run", run, "--json")
    assert ok.exit_code == 0, ok.output
    v = last_json(ok)
    assert v["ok"] and v["digital_source_type"].endswith("/trainedAlgorithmicMedia")
    g = v["generation"]
    assert g["model_sha256"] == sha256_file(run / "model.safetensors")
    assert g["run_manifest_sha256"] == sha256_file(run / "manifest.json")
    assert g["prompts"] == ["a red circle center, by artist 3"] and g["seed"] == 0
    # the report's samples were signed at training, before the run was sealed
    rep = invoke("verify-image", run / "samples" / "artist_3.png", "--run", run, "--json")
    assert rep.exit_code == 0 and last_json(rep)["generation"]["run_manifest_sha256"] is None

    edited = tmp_path / "edited.png"
    edited.write_bytes(splice_pixels(out.read_bytes()))
    bad = invoke("verify-image", edited, "--run", run, "--json")
    assert bad.exit_code == 1 and any("changed after it was signed" in p for p in last_json(bad)["problems"])
    stripped = tmp_path / "stripped.png"
    Image.open(out).save(stripped)  # re-saved: the manifest is gone
    bad = invoke("verify-image", stripped)
    assert bad.exit_code == 1 and "no C2PA manifest" in bad.output


def test_image_checked_against_the_run(run, tmp_path):
    out = tmp_path / "s.png"
    assert invoke("sample", run, "--prompt", "a photo of person 1 center", "-n", "1", "--steps", "2",
                  "--out", out).exit_code == 0
    other = tmp_path / "other"
    import shutil

    shutil.copytree(run, other)
    with open(other / "model.safetensors", "r+b") as f:  # another model in the run directory
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    bad = invoke("verify-image", out, "--run", other, "--json")
    problems = last_json(bad)["problems"]
    assert bad.exit_code == 1 and any("not the model that generated the image" in p for p in problems)
    assert any("does not match its manifest.json" in p for p in problems)


def test_own_key_and_a_mismatched_key(run, signing, tmp_path):
    cert, key = signing
    out = tmp_path / "own.png"
    r = invoke("sample", run, "--prompt", "a red circle center", "-n", "1", "--steps", "2", "--out", out,
               "--cert", cert, "--key", key, "--json")
    assert r.exit_code == 0 and last_json(r)["self_signed"] is False
    v = last_json(invoke("verify-image", out, "--json"))
    assert v["ok"] and v["signer"]["common_name"] == "govlab tests"

    from govlab.compliance.credentials import make_self_signed

    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(make_self_signed("someone else")[1])
    bad = invoke("sample", run, "--prompt", "x", "-n", "1", "--steps", "2", "--out", tmp_path / "no.png",
                 "--cert", cert, "--key", other_key)
    assert bad.exit_code != 0 and not (tmp_path / "no.png").exists()
    assert "does not match the certificate" in str(bad.exception) and str(other_key) in str(bad.exception)


def test_run_key_is_owner_only(tmp_path, monkeypatch):
    from govlab.compliance.credentials import run_signing_key

    monkeypatch.setenv("GOVLAB_CACHE", str(tmp_path))
    k = run_signing_key("ab" * 32)
    d = tmp_path / "c2pa-keys" / ("ab" * 8)
    assert (d.stat().st_mode & 0o777, (d / "key.pem").stat().st_mode & 0o777) == (0o700, 0o600)
    assert sorted(p.name for p in d.iterdir()) == ["cert.pem", "key.pem"]  # no temporary file left
    assert run_signing_key("ab" * 32).key_pem == k.key_pem  # made once, then read back
