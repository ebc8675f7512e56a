"""C2PA Content Credentials through c2pa-python: the CAWG training-and-data-mining assertion a
training image may carry, and the manifest govlab embeds in the images it generates.

A training image's manifest is read only when the file holds one (``has_c2pa`` walks the PNG chunk
headers or the JPEG segment headers, without decoding anything), so a folder without Content
Credentials loads as fast as before.
"""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from govlab.errors import GovlabError
from govlab.io import atomic_path, sha256_file

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
DIGITAL_CREATION = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCreation"
TRAINING_LABELS = ("cawg.training-mining", "c2pa.training-mining")  # CAWG 1.0; the C2PA 1.x label before it
GENERATIVE_KEYS = ("cawg.ai_generative_training", "c2pa.ai_generative_training")
USES = ("allowed", "notAllowed", "constrained")
GENERATION_LABEL = "org.govlab.generation"
# a self-signed certificate is not on any trust list: its signature proves integrity, not identity
UNTRUSTED = "signingCredential.untrusted"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def has_c2pa(path: str | Path) -> bool:
    """Whether an image file holds a C2PA manifest store: a PNG ``caBX`` chunk, or a JPEG APP11
    segment holding a JUMBF box labelled ``c2pa``. Reads only chunk and segment headers."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if head == PNG_SIGNATURE:
                while len(h := f.read(8)) == 8:
                    if h[4:] == b"caBX":
                        return True
                    if h[4:] == b"IEND":
                        return False
                    f.seek(int.from_bytes(h[:4], "big") + 4, io.SEEK_CUR)  # data and CRC
                return False
            if head[:2] == b"\xff\xd8":
                f.seek(2)
                while len(m := f.read(4)) == 4 and m[0] == 0xFF:
                    if m[1] in (0xDA, 0xD9):  # start of scan / end: metadata segments come before
                        return False
                    n = int.from_bytes(m[2:], "big") - 2
                    if m[1] == 0xEB:  # APP11: JPEG XT boxes, where C2PA puts its JUMBF
                        seg = f.read(n)
                        if b"jumb" in seg and b"c2pa" in seg:
                            return True
                    else:
                        f.seek(n, io.SEEK_CUR)
    except OSError:
        return False  # the loader reports unreadable files
    return False


def _context():
    """c2pa-python context: no thumbnail in the manifest (a 16x16 image would carry a 100 KB one)."""
    import c2pa

    return c2pa.Context(settings=c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))


def _mime(path: Path) -> str | None:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower())


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def read_store(path: str | Path) -> dict | None:
    """The manifest store of an image as c2pa-python reports it (``active``: the active manifest,
    ``state``: its validation state, ``failures``: failure codes), None if it has none; raises
    GovlabError naming the file when the store cannot be read (corrupt, or no signature)."""
    import c2pa

    path = Path(path)
    try:
        with open(path, "rb") as f, c2pa.Reader(_mime(path), f, None, _context()) as r:
            active = r.get_active_manifest()
            state = r.get_validation_state()
            results = r.get_validation_results() or {}
    except c2pa.C2paError.ManifestNotFound:
        return None
    except c2pa.C2paError as e:
        raise GovlabError(f"{path}: its C2PA manifest cannot be read ({_first_line(e)})") from None
    failures = [f.get("code") for f in (results.get("activeManifest") or {}).get("failure", [])]
    return {"active": active or {}, "state": state, "failures": failures}


def assertion(manifest: dict, labels: tuple[str, ...]) -> dict | None:
    for a in manifest.get("assertions", []):
        if a.get("label") in labels:
            return a.get("data") or {}
    return None


def digital_source_type(manifest: dict) -> str | None:
    actions = assertion(manifest, ("c2pa.actions", "c2pa.actions.v2")) or {}
    for a in actions.get("actions", []):
        if a.get("action") == "c2pa.created" and a.get("digitalSourceType"):
            return a["digitalSourceType"].strip()
    return None


@dataclass(frozen=True)
class TrainingPermission:
    """What an image's Content Credentials say about generative training."""

    file: str
    use: str | None  # allowed | notAllowed | constrained | None (no such assertion)
    constraint_info: str | None = None
    state: str | None = None  # c2pa validation state (Valid, Trusted, Invalid), None if unreadable
    problem: str | None = None  # why the manifest cannot be relied on (then the record is kept, with a warning)
    digital_source_type: str | None = None
    signer: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def training_permission(path: str | Path, name: str | None = None) -> TrainingPermission | None:
    """Read the CAWG training-and-data-mining assertion of one image (``cawg.ai_generative_training``,
    in an ``entries`` map or at the top level, both forms being in use); None if the image has no
    manifest. A manifest that cannot be read or does not validate gives a permission with
    ``problem`` set (and what it claims, unverified, in ``use``)."""
    path = Path(path)
    name = name or path.name
    if not has_c2pa(path):
        return None
    try:
        store = read_store(path)
    except GovlabError as e:
        return TrainingPermission(name, None, problem=str(e).partition(": ")[2])
    if store is None:
        return None
    m = store["active"]
    data = assertion(m, TRAINING_LABELS)
    entries = (data.get("entries", data) if isinstance(data, dict) else {}) or {}
    entry = next((entries[k] for k in GENERATIVE_KEYS if isinstance(entries.get(k), dict)), None)
    use = entry.get("use") if entry else None
    info = entry.get("constraint_info") or entry.get("constraints_info") if entry else None
    problems = [f for f in store["failures"] if f != UNTRUSTED]
    problem = None
    if store["state"] not in ("Valid", "Trusted") or problems:
        problem = f"manifest does not validate ({', '.join(problems) or store['state']})"
    elif use is not None and use not in USES:
        problem = f"unknown training-mining use {use!r} (known: {', '.join(USES)})"
    sig = m.get("signature_info") or {}
    return TrainingPermission(name, use, info, store["state"], problem, digital_source_type(m),
                              sig.get("common_name") or sig.get("issuer"))


# -- signing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SigningKey:
    """A PEM certificate chain (end entity first) and its private key."""

    cert_pem: bytes
    key_pem: bytes
    alg: str  # es256 | es384 | es512 | ps256 | ed25519
    self_signed: bool
    where: str  # where it came from (files, or the govlab cache)

    def signer(self):
        import c2pa

        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(self.alg, self.cert_pem, self.key_pem, None))


def _alg(public_key, where: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(public_key, ec.EllipticCurvePublicKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(public_key.curve.name)
        if alg:
            return alg
    elif isinstance(public_key, rsa.RSAPublicKey):
        return "ps256"
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    raise GovlabError(f"{where}: C2PA signs with EC P-256/P-384/P-521, RSA (PSS) or Ed25519 keys, not "
                      f"{type(public_key).__name__}")


def load_signing_key(cert: str | Path, key: str | Path) -> SigningKey:
    """The user's own certificate chain and private key (PEM); a key that does not match the
    certificate is refused naming both files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert, key = Path(cert), Path(key)
    for p in (cert, key):
        if not p.is_file():
            raise GovlabError(f"{p}: not found")
    cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise GovlabError(f"{cert}: not a PEM certificate ({e})") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise GovlabError(f"{key}: not an unencrypted PEM private key ({e})") from None
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != chain[0].public_key().public_bytes(*raw):
        raise GovlabError(f"{key}: this private key does not match the certificate {cert} (the "
                          "certificate's public key is another key's)")
    return SigningKey(cert_pem, key_pem, _alg(chain[0].public_key(), str(cert)),
                      chain[0].issuer == chain[0].subject, f"{cert}, {key}")


def make_self_signed(name: str = "govlab") -> tuple[bytes, bytes]:
    """A throwaway certificate chain (a CA of its own and an end-entity certificate with the
    extensions C2PA requires) and its EC P-256 key, as PEM. Its signatures prove that an image is
    unchanged since it was signed, not who signed it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def dn(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "govlab (self-signed)")])

    def usage(sign: bool):
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    def cert(subject, issuer, public, signer, ca: bool):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=3650))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
             .add_extension(usage(not ca), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))
        if not ca:
            b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                critical=False))
        return b.sign(signer, hashes.SHA256())

    ca = cert(dn(f"{name} CA"), dn(f"{name} CA"), ca_key.public_key(), ca_key, True)
    ee = cert(dn(name), dn(f"{name} CA"), key.public_key(), ca_key, False)
    pem = serialization.Encoding.PEM
    return (ee.public_bytes(pem) + ca.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def run_signing_key(model_sha256: str) -> SigningKey:
    """The per-run self-signed key: made once per trained model, kept in the govlab cache (never in
    the run directory, which is shared), so that every image of a run carries the same certificate."""
    import os

    from filelock import FileLock

    from govlab.data.cache import cache_dir

    d = cache_dir("c2pa-keys", model_sha256[:16])
    os.chmod(d, 0o700)
    cert, key = d / "cert.pem", d / "key.pem"
    with FileLock(f"{d}.lock"):
        if not (cert.is_file() and key.is_file()):
            cert_pem, key_pem = make_self_signed(f"govlab run {model_sha256[:12]}")
            # the private key is owner-only from its first byte: created 0600 under a fresh
            # name, then renamed onto key.pem (never world-readable, not even briefly)
            tmp = d / f".key.pem.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(key_pem)
                os.replace(tmp, key)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            with atomic_path(cert) as tmp:
                tmp.write_bytes(cert_pem)
    return SigningKey(cert.read_bytes(), key.read_bytes(), "es256", True, str(d))


def generation_assertion(run: str | Path, **details) -> dict:
    """What govlab asserts about an image it generated from ``run``: the sha256 of the model's
    weights and of the run's manifest.json (None while the run is not sealed yet, as for the report's
    own samples, which the manifest then covers), the run's config hash, and ``details`` (prompts,
    seed, sampler steps, guidance)."""
    from govlab import __version__
    from govlab.config import from_dict, read_yaml

    run = Path(run)
    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    manifest = run / "manifest.json"
    return {"run_name": cfg.name, "config_hash": cfg.hash(),
            "model_sha256": sha256_file(run / "model.safetensors"),
            "run_manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
            "govlab_version": __version__, **details}


def manifest_definition(generation: dict, title: str) -> dict:
    return {
        "claim_generator_info": [{"name": "govlab", "version": generation.get("govlab_version", "")}],
        "title": title,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": {"name": "govlab", "version": generation.get("govlab_version", "")},
                "description": f"generated by the model of govlab run {generation.get('run_name')}"}]}},
            {"label": GENERATION_LABEL, "data": generation},
        ],
    }


def sign_png_bytes(png: bytes, definition: dict, key: SigningKey) -> bytes:
    """``png`` with a signed C2PA manifest of ``definition`` embedded."""
    import c2pa

    try:
        with c2pa.Builder(definition, context=_context()) as builder:
            out = io.BytesIO()
            builder.sign(key.signer(), "image/png", io.BytesIO(png), out)
    except c2pa.C2paError as e:
        raise GovlabError(f"{key.where}: C2PA signing failed ({_first_line(e)})") from None
    return out.getvalue()


def write_signed_png(image, path: str | Path, generation: dict, key: SigningKey) -> None:
    """Save a PIL image as PNG with its C2PA manifest, atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    signed = sign_png_bytes(buf.getvalue(), manifest_definition(generation, Path(path).name), key)
    with atomic_path(path) as tmp:
        tmp.write_bytes(signed)


def sign_file(path: str | Path, generation: dict, key: SigningKey) -> None:
    """Embed a signed manifest in a PNG already written (atomically replaced)."""
    path = Path(path)
    signed = sign_png_bytes(path.read_bytes(), manifest_definition(generation, path.name), key)
    with atomic_path(path) as tmp:
        tmp.write_bytes(signed)


def sign_samples(run: str | Path, paths: list[Path], *, probes: list[dict] | None = None,
                 key: SigningKey | None = None, **details) -> SigningKey:
    """Sign a run's sample grids (the report's ``samples/*.png``) with the run's key (``key``, or
    the per-run self-signed one)."""
    run = Path(run)
    generation = generation_assertion(run, **details)
    key = key or run_signing_key(generation["model_sha256"])
    for p in paths:
        prompts = sorted({q.get("caption") or q.get("prompt") for q in probes or [] if q.get("source_id") == Path(p).stem})
        sign_file(p, {**generation, **({"prompts": prompts} if prompts else {})}, key)
    return key


# -- checking a generated image ------------------------------------------------------------------

def verify_image(image: str | Path, run: str | Path | None = None) -> dict:
    """Read a generated image's manifest back and check it: it validates (the image is unchanged
    since it was signed), it declares ``trainedAlgorithmicMedia``, it carries govlab's generation
    assertion, and, with ``run``, that assertion matches the run directory (the model's sha256, on
    disk and in the run's manifest.json, and the config hash). ``problems`` empty: it holds."""
    image = Path(image)
    if not image.is_file():
        raise GovlabError(f"{image}: image not found")
    out = {"image": str(image), "run": str(run) if run is not None else None, "problems": [], "notes": []}
    problems, notes = out["problems"], out["notes"]
    try:
        store = read_store(image) if has_c2pa(image) else None
    except GovlabError as e:
        problems.append(str(e))
        store = None
    if store is None:
        if not problems:
            problems.append(f"{image}: no C2PA manifest")
        out["ok"] = False
        return out
    m = store["active"]
    out["state"] = store["state"]
    out["failures"] = store["failures"]
    sig = m.get("signature_info") or {}
    out["signer"] = {"common_name": sig.get("common_name"), "issuer": sig.get("issuer"), "alg": sig.get("alg")}
    for code in store["failures"]:
        if code == UNTRUSTED:
            notes.append("signed with a certificate on no trust list (a self-signed key proves integrity, "
                         "not identity)")
        elif code == "assertion.dataHash.mismatch":
            problems.append(f"{image}: the image was changed after it was signed ({code})")
        else:
            problems.append(f"{image}: the manifest does not validate ({code})")
    if store["state"] not in ("Valid", "Trusted") and not problems:
        problems.append(f"{image}: the manifest does not validate (state {store['state']})")
    out["digital_source_type"] = dst = digital_source_type(m)
    if dst != TRAINED_ALGORITHMIC_MEDIA:
        problems.append(f"{image}: digitalSourceType is {dst!r}, not trainedAlgorithmicMedia")
    gen = assertion(m, (GENERATION_LABEL,))
    out["generation"] = gen
    if gen is None:
        problems.append(f"{image}: no {GENERATION_LABEL} assertion (not generated by govlab)")
    elif run is not None:
        _check_run(Path(run), gen, problems, notes)
    out["ok"] = not problems
    return out


def _check_run(run: Path, gen: dict, problems: list[str], notes: list[str]) -> None:
    from govlab.config import from_dict, read_yaml
    from govlab.provenance.manifest import MANIFEST, verify

    model = run / "model.safetensors"
    if not model.is_file():
        problems.append(f"{run}: no model.safetensors to check the image against")
        return
    if sha256_file(model) != gen.get("model_sha256"):
        problems.append(f"{run}: model.safetensors is not the model that generated the image "
                        f"(sha256 {gen.get('model_sha256')!r} in the image)")
    cfg = from_dict(read_yaml(run / "config.yaml"), where=str(run / "config.yaml"))
    if cfg.hash() != gen.get("config_hash"):
        problems.append(f"{run}: config hash {cfg.hash()} differs from the image's {gen.get('config_hash')!r}")
    manifest = run / MANIFEST
    if not manifest.is_file():
        notes.append(f"{run}: no {MANIFEST} (an unsealed run): only the model file was checked")
        return
    recorded = json.loads(manifest.read_text()).get("files", {}).get("model.safetensors")
    if recorded != gen.get("model_sha256"):
        problems.append(f"{run}/{MANIFEST}: records another model.safetensors than the image's")
    changed = verify(run)
    if changed:
        problems.append(f"{run}: the run does not match its {MANIFEST} ({'; '.join(changed[:3])})")
    if gen.get("run_manifest_sha256") is None:
        notes.append("made before the run was sealed (a report sample): its sha256 is in the run's manifest")
        return
    if sha256_file(manifest) != gen["run_manifest_sha256"]:
        notes.append(f"{MANIFEST} has been re-sealed since the image was made (attest and audits add "
                     "files); the model and config still match")
