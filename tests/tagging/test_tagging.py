"""govlab tag on the smoke world with its labels hidden: agreement with ground truth, the review file,
sources from fields, unknown origins, a local CLIP encoder, bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from govlab.bench.tagging import compare, without_source
from govlab.data.dataset import load_dataset
from govlab.data.world import CATEGORIES
from govlab.errors import GovlabError
from govlab.io import _UMASK
from govlab.tagging import load_taxonomy, tag_folder
from govlab.tagging.sources import slug, source_from_fields
from govlab.tagging.world import EXEMPLARS, exemplar_records, hide_labels, write_exemplars

GOVLAB = [str(Path(sys.executable).parent / "govlab")]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_blind_tags_agree_with_the_hidden_ground_truth(tagged_blind, truth):
    src, out, summary = tagged_blind
    # the tagger saw images and captions only; no caption names a source, the agency or a person
    for rec in read(src / "metadata.jsonl"):
        assert set(rec) == {"file_name", "caption"}
        assert "artist" not in rec["caption"] and "stock" not in rec["caption"] and "person" not in rec["caption"]
    got = read(out / "metadata.jsonl")
    figures = compare(truth, got)
    for c in CATEGORIES:
        assert figures["agreement"][c] >= 0.95, (c, figures)
    assert figures["source_agreement"] >= 0.95 and figures["identity_recall"] >= 0.95
    assert figures["watermark_recall"] >= 0.95
    # the figures are the records' own: recounted here from the files
    wrong = sum(t["source_id"] != g["source_id"] for t, g in zip(truth, got))
    assert figures["source_agreement"] == round(1 - wrong / len(truth), 4)
    lo, hi = figures["source_agreement_ci"]
    assert lo <= figures["source_agreement"] <= hi
    # sources came from the embedding rule (captions name none), and so did every identity and watermark
    assert summary["source_evidence"] == {"embedding": len(truth)}
    assert summary["from_images_only"] == {c: sum(c in g["categories"] for g in got) for c in ("identity", "watermark")}


def test_tagged_copy_loads_and_the_input_is_untouched(tagged_blind, smoke_world, tmp_path):
    src, out, _ = tagged_blind
    ds = load_dataset(out, image_size=16)  # every governance field present and valid
    assert len(ds) == len(read(src / "metadata.jsonl"))
    assert (ds.images == load_dataset(smoke_world, image_size=16).images).all()
    before = digest(src)
    tag_folder(src, out, progress=False)  # a tagged copy may be replaced; the input is never written
    assert digest(src) == before
    assert json.loads((out / "tag.json").read_text())["records"] == len(ds)


def test_review_lists_every_value_lowest_confidence_first(tagged_blind):
    src, out, _ = tagged_blind
    rows = read(out / "review.jsonl")
    conf = [r["confidence"] for r in rows]
    assert conf == sorted(conf) and 0 <= conf[0] < conf[-1] <= 1
    got = {r["file_name"]: r for r in read(out / "metadata.jsonl")}
    for field in ("source_id", "license", "opt_out"):
        listed = {r["file_name"]: r["value"] for r in rows if r["field"] == field}
        assert listed == {f: g[field] for f, g in got.items()}, field
    for f, g in got.items():
        assigned = {r["value"] for r in rows if r["file_name"] == f and r["field"] == "categories" and r["assigned"]}
        assert assigned == set(g["categories"])
    # an embedding rule's withheld category is listed too, with its probability
    withheld = [r for r in rows if not r["assigned"]]
    assert withheld and all("embedding: p=" in r["evidence"] for r in withheld)


def test_caption_cues_decide_when_present(smoke_world, truth, tmp_path):
    src = hide_labels(smoke_world, tmp_path / "in", cues=True)
    summary = tag_folder(src, tmp_path / "out", progress=False)
    assert summary["source_evidence"] == {"caption": len(truth)}
    got = read(tmp_path / "out" / "metadata.jsonl")
    assert [g["source_id"] for g in got] == [t["source_id"] for t in truth]
    assert [g["license"] for g in got] == [t["license"] for t in truth]


def write_folder(root: Path, rows: list[tuple[str, str, dict, dict]]) -> Path:
    """rows: (file_name, caption, extra metadata, EXIF tags) of solid-colour images."""
    lines = []
    for i, (name, caption, extra, exif) in enumerate(rows):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (16, 16), (20 * i % 255, 100, 50))
        ex = Image.Exif()
        for k, v in exif.items():
            ex[k] = v
        im.save(root / name, exif=ex)
        lines.append(json.dumps({"file_name": name, "caption": caption, **extra}) + "\n")
    (root / "metadata.jsonl").write_text("".join(lines))
    return root


def test_sources_from_fields_and_one_per_unique_origin(tmp_path):
    tax = tmp_path / "tax.yaml"
    tax.write_text("categories:\n  semantics: {keywords: [circle]}\n")  # no exemplars at all
    src = write_folder(tmp_path / "in", [
        ("a/x.png", "a circle", {"url": "https://www.example.org/img/1.png"}, {}),
        ("a/y.png", "a square", {}, {0x013B: "Jane Doe"}),
        ("b/z.png", "a circle", {"source_id": "given_src", "license": "CC0-1.0"}, {}),
        ("b/w.png", "nothing", {}, {}),
    ])
    src.chmod(0o700)
    summary = tag_folder(src, tmp_path / "out", taxonomy=tax, progress=False)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~_UMASK  # as mkdir makes it, not owner-only
    got = {r["file_name"]: r for r in read(tmp_path / "out" / "metadata.jsonl")}
    assert got["a/x.png"]["source_id"] == "example.org" and got["a/y.png"]["source_id"] == "jane_doe"
    assert got["b/z.png"]["source_id"] == "given_src" and got["b/z.png"]["license"] == "CC0-1.0"
    assert got["b/w.png"]["source_id"].startswith("origin_")  # nothing says: its own origin, said in the review
    assert got["a/x.png"]["categories"] == ["semantics"] and got["a/y.png"]["categories"] == []
    assert summary["source_evidence"] == {"field": 2, "given": 1, "origin": 1}
    review = [r for r in read(tmp_path / "out" / "review.jsonl") if r["field"] == "source_id"]
    assert any("one source per distinct image" in r["evidence"] for r in review)
    tag_folder(src, tmp_path / "out2", taxonomy=tax, source_from="folder:1", progress=False)
    got = {r["file_name"]: r["source_id"] for r in read(tmp_path / "out2" / "metadata.jsonl")}
    assert got == {"a/x.png": "a", "a/y.png": "a", "b/z.png": "given_src", "b/w.png": "b"}


def test_a_field_with_no_letters_or_digits_gives_no_source():
    assert slug("©") is None and slug(" --- ") is None and slug("Jane Doe") == "jane_doe"
    assert source_from_fields({"file_name": "x.png", "src": "---"}, None, "field:src") is None
    assert source_from_fields({"file_name": "_/x.png"}, None, "folder:1") is None
    assert source_from_fields({"file_name": "x.png"}, {0x013B: "©"}, "exif") is None
    assert source_from_fields({"file_name": "x.png"}, {0x013B: "©", 0x8298: "ACME Ltd"}, "auto") == \
        ("acme_ltd", "EXIF copyright 'ACME Ltd'")


def test_a_source_without_exemplars_is_an_unknown_origin(tagged_blind, truth, tmp_path):
    """With no exemplars of artist_5, its images are set apart as unknown origins (at least 80% of
    them), and no other image is.

    The rule sets apart whole k-means clusters (median distance to the nearest known source over the
    threshold), not single images: an image of artist_5 that k-means puts among a known artist's
    images goes with them. Which images that happens to depends on the floating-point results of the
    encoder and k-means (the unpinned torch and scikit-learn versions, the CPU): with the same code,
    world, exemplars and byte-identical evaluator, torch 2.13 and scikit-learn 1.9 on 1 thread put 2 of
    the 24 among artist_2's images (one of them nearer to artist_2's exemplars than the threshold on
    its own), where earlier versions put none."""
    src, _, _ = tagged_blind
    tax = without_source("artist_5", tmp_path / "tax.yaml")
    summary = tag_folder(src, tmp_path / "out", taxonomy=tax, progress=False)
    got = read(tmp_path / "out" / "metadata.jsonl")
    unknown = [g["source_id"].startswith("unknown_") for g in got]
    unseen = [t["source_id"] == "artist_5" for t in truth]
    assert not any(u and not a for u, a in zip(unknown, unseen)), "an image of a known source was set apart"
    assert sum(unknown) >= 0.8 * sum(unseen), f"{sum(unknown)} of {sum(unseen)} images of artist_5 set apart"
    assert summary["source_evidence"]["origin"] == sum(unknown) > 0
    review = [r for r in read(tmp_path / "out" / "review.jsonl") if r["field"] == "source_id"]
    assert sum("is one unknown origin" in r["evidence"] for r in review) == sum(unknown)
    assert not any("style" in g["categories"] for g, u in zip(got, unknown) if u)  # nothing says it is an artist


def test_shipped_exemplars_are_the_held_out_world_s(tmp_path):
    write_exemplars(tmp_path)
    shipped = sorted(p.relative_to(EXEMPLARS) for p in EXEMPLARS.rglob("*.png"))
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert len(shipped) == len(exemplar_records())
    for p in shipped:
        assert np.array_equal(np.asarray(Image.open(EXEMPLARS / p)), np.asarray(Image.open(tmp_path / p))), p
    tax = load_taxonomy()
    assert set(tax.categories) == set(CATEGORIES)


def tiny_clip(path: Path, full: bool) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    vision = CLIPVisionConfig(image_size=16, patch_size=8, hidden_size=16, intermediate_size=32,
                              num_hidden_layers=1, num_attention_heads=2, projection_dim=8)
    if full:
        text = CLIPTextConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, max_position_embeddings=16, projection_dim=8)
        model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8))
    else:
        model = CLIPVisionModel(vision)
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("full", [False, True])
def test_a_local_clip_folder_is_the_encoder(tmp_path, full):
    from govlab.tagging import ClipEncoder

    enc = ClipEncoder(tiny_clip(tmp_path / "clip", full))
    images = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    x = enc(images)
    assert x.shape == (2, 8 if full else 16) and np.isfinite(x).all() and not np.allclose(x[0], x[1])


def test_tag_with_a_clip_encoder_from_the_command_line(smoke_world, tmp_path):
    clip = tiny_clip(tmp_path / "clip", False)
    src = hide_labels(smoke_world, tmp_path / "in", cues=True)
    proc = subprocess.run(GOVLAB + ["tag", str(src), "--encoder", str(clip), "--out", str(tmp_path / "out"),
                                    "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["encoder"].startswith("CLIPVisionModel") and r["records"] == len(read(src / "metadata.jsonl"))
    assert len(load_dataset(tmp_path / "out", image_size=16)) == r["records"]


# -- bad input: one clear error each, the input untouched, nothing written ------------------------

def _bad(src, tmp_path, match, **kw):
    before = digest(src)
    with pytest.raises(GovlabError, match=match):
        tag_folder(src, tmp_path / "out", progress=False, **kw)
    assert digest(src) == before
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_taxonomy_with_an_unknown_category(tmp_path):
    src = write_folder(tmp_path / "in", [("a.png", "a circle", {}, {})])
    tax = tmp_path / "tax.yaml"
    tax.write_text("categories:\n  semantics: {keywords: [circle]}\n  mood: {keywords: [sad]}\n")
    _bad(src, tmp_path, r"tax\.yaml: unknown category 'mood'", taxonomy=tax)
    tax.write_text("sources:\n  s1: {categories: [vibe]}\n")
    _bad(src, tmp_path, r"tax\.yaml: sources\.s1\.categories: unknown category 'vibe'", taxonomy=tax)


def test_encoder_folder_that_is_not_clip(tmp_path):
    src = write_folder(tmp_path / "in", [("a.png", "a circle", {}, {})])
    enc = tmp_path / "bert"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _bad(src, tmp_path, r"bert: not a CLIP model \(config.json model_type 'bert'", encoder=enc)
    _bad(src, tmp_path, r"nowhere: not a CLIP model folder", encoder=tmp_path / "nowhere")


def test_folder_with_no_captions(tmp_path):
    src = write_folder(tmp_path / "in", [("a.png", "", {}, {}), ("b.png", "", {}, {})])
    _bad(src, tmp_path, r"metadata.jsonl: no captions")
    proc = subprocess.run(GOVLAB + ["tag", str(src), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no captions" in proc.stderr
    assert not (tmp_path / "out").exists()
