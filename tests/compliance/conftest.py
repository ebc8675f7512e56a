import shutil
import zlib

import pytest

from govlab.config import from_dict
from govlab.testing import TINY_EVAL, TINY_MODEL, TINY_TRAIN, one_thread

TINY = {"model": TINY_MODEL, "train": TINY_TRAIN, "eval": TINY_EVAL, "provenance": {"enabled": True}}
NOT_ALLOWED = 3  # artist_1 images marked notAllowed


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def signing(tmp_path_factory):
    """A self-signed certificate chain and key, as the user's own would be given (files)."""
    from govlab.compliance.credentials import make_self_signed

    d = tmp_path_factory.mktemp("keys")
    cert, key = make_self_signed("govlab tests")
    (d / "cert.pem").write_bytes(cert)
    (d / "key.pem").write_bytes(key)
    return d / "cert.pem", d / "key.pem"


def training_mining(use: str, *, top_level: bool = False, info: str | None = None) -> dict:
    entry = {"use": use, **({"constraint_info": info} if info else {})}
    data = {"cawg.ai_generative_training": entry}
    return {"claim_generator_info": [{"name": "a creator's tool", "version": "1"}],
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
                               "action": "c2pa.created",
                               "digitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCreation"}]}},
                           {"label": "cawg.training-mining", "data": data if top_level else {"entries": data}}]}


@pytest.fixture(scope="session")
def signed_world(smoke_cfg, smoke_dataset, signing, tmp_path_factory):
    """The smoke world with Content Credentials in some images: 3 of artist_1's marked notAllowed
    (the ``entries`` form), 1 of artist_3's constrained (top-level form), 1 of artist_4's with a
    corrupt manifest and 1 of artist_5's whose signature does not verify. Returns (folder, files)."""
    from govlab.compliance.credentials import load_signing_key, sign_png_bytes

    root = tmp_path_factory.mktemp("signed") / "world"
    shutil.copytree(smoke_dataset.root, root)
    key = load_signing_key(*signing)
    by = {}
    for r in smoke_dataset.records:
        by.setdefault(r["source_id"], []).append(r["file_name"])
    files = {"notAllowed": by["artist_1"][:NOT_ALLOWED], "constrained": by["artist_3"][:1],
             "corrupt": by["artist_4"][:1], "bad_signature": by["artist_5"][:1]}

    def sign(name, definition):
        path = root / name
        path.write_bytes(sign_png_bytes(path.read_bytes(), definition, key))
        return path

    for name in files["notAllowed"]:
        sign(name, training_mining("notAllowed"))
    sign(files["constrained"][0], training_mining("constrained", top_level=True, info="licence on request"))
    p = sign(files["corrupt"][0], training_mining("notAllowed"))
    p.write_bytes(damage_manifest(p.read_bytes(), p.read_bytes().find(b"caBX") + 200))  # no longer parses
    p = sign(files["bad_signature"][0], training_mining("notAllowed"))
    p.write_bytes(damage_manifest(p.read_bytes(), p.read_bytes().find(b"c2pa.signature") + 300))  # no longer verifies
    return root, files


def damage_manifest(png: bytes, at: int) -> bytes:
    """Flip a byte inside the PNG's C2PA chunk, with the chunk's CRC made right again (the image
    stays a readable PNG; only its manifest is damaged)."""
    data = bytearray(png)
    data[at] ^= 0xFF
    start = png.find(b"caBX") - 4
    n = int.from_bytes(png[start:start + 4], "big")
    data[start + 8 + n:start + 12 + n] = zlib.crc32(bytes(data[start + 4:start + 8 + n])).to_bytes(4, "big")
    return bytes(data)


@pytest.fixture(scope="session")
def c2pa_run(smoke_cfg, signed_world, tmp_path_factory):
    """A tiny run on the signed world, with the index and an opt-out registry (artist_2 from the
    start, artist_0 from step 2)."""
    from govlab.run import train_run

    base = tmp_path_factory.mktemp("c2pa-run")
    registry = base / "optouts.jsonl"
    registry.write_text('{"source_id": "artist_2", "since": 0}\n{"source_id": "artist_0", "since": 2}\n')
    cfg = from_dict({"name": "tiny-compliance", "data": str(signed_world[0]), **TINY,
                     "provenance": {"enabled": True, "mode": "exact", "optouts": str(registry)}}, base=smoke_cfg)
    out = base / "run"
    with pytest.warns(UserWarning, match="C2PA manifest not relied on"):
        train_run(cfg, out, progress=False)
    return out


@pytest.fixture
def run(c2pa_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(c2pa_run, out)
    return out
