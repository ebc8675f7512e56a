"""A folder that is not the world, end to end through the CLI: train, report, verify, audit, query,
attest, attenuate, the explorer's data layer; its optional fields, its BOM/CRLF metadata, bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from govlab.cli import app
from govlab.config import from_dict, load_config
from govlab.data import WorldConfig, generate_world, load_dataset
from govlab.errors import GovlabError
from govlab.eval.own_data import has_world_truth, score_own_images

SOURCES = {"studio_north": (200, 60, 40), "studio_south": (40, 90, 210), "archive": (60, 170, 80)}
DUP_CAPTION = "the lighthouse at dusk, famous print"
PER_SOURCE = 8


def make_folder(root, *, bom: bool = False):
    """Three sources of 16x16 images (a colour per source), each image with its own caption; one
    image copied 6 times (duplicate_group null), some records without the field at all."""
    rng = np.random.default_rng(0)
    (root / "photos").mkdir(parents=True)
    records = []
    for s, (name, colour) in enumerate(SOURCES.items()):
        for k in range(PER_SOURCE):
            img = np.clip(np.array(colour) + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "photos" / f"{name}_{k}.png")
            rec = {"file_name": f"photos/{name}_{k}.png", "caption": f"{name.replace('_', ' ')} picture {k}",
                   "source_id": name, "categories": ["style"], "license": "CC-BY-4.0", "opt_out": False}
            if k % 2:
                rec["duplicate_group"] = None
            records.append(rec)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "photos" / "dup.png")
    records += [{"file_name": "photos/dup.png", "caption": DUP_CAPTION, "source_id": "archive",
                 "categories": ["style"], "license": "CC0-1.0", "opt_out": False, "duplicate_group": None}
                for _ in range(6)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    if bom:
        (root / "metadata.jsonl").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    else:
        (root / "metadata.jsonl").write_text(text)
    return root


def cli(*args):
    """The govlab command in this process; returns (exit code, last stdout line as JSON or text)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = result.stdout.strip().splitlines()
    try:
        return result.exit_code, json.loads(lines[-1])
    except (json.JSONDecodeError, IndexError):
        return result.exit_code, result.stdout


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """One routed smoke training with the provenance index on the folder, shared by the tests."""
    tmp = tmp_path_factory.mktemp("own")
    data = make_folder(tmp / "data")
    cfg = tmp / "tiny.yaml"
    cfg.write_text("train: {steps: 6, checkpoint_every: 3, warmup_steps: 1}\n"
                   "eval: {per_prompt: 1, steps: 2}\n"
                   "routing: {mode: routed}\nprovenance: {enabled: true}\n")
    out = tmp / "run"
    code, result = cli("train", "--preset", "smoke", "--config", cfg, "--data", data, "--out", out, "--json")
    assert code == 0, result
    return data, out, result


def test_train_scores_on_own_data_and_seals_a_verifiable_run(own):
    data, out, r = own
    assert r["scored_against"] == "own-data" and r["steps"] == 6 and r["records"] == 30
    assert r["sources"] == sorted(SOURCES)
    assert "style_acc" not in r and "shape_acc" not in r  # the world's evaluators did not run
    assert 0 <= r["nearest_source_acc"] <= 1 and r["n_images"] == 3 * 4
    lo, hi = r["nearest_source_acc_ci"]
    assert lo <= r["nearest_source_acc"] <= hi
    # chance: the share of distinct training images from the prompted source (8, 8 and 8 + 1 of 25)
    assert r["chance_nearest_source"] == pytest.approx((8 / 25 * 2 + 9 / 25) / 3, abs=1e-4)
    assert r["loss_first"] > 0 and r["loss_last"] > 0 and r["loss_window_steps"] == 1
    loss = json.loads((out / "loss.json").read_text())
    assert len(loss["loss"]) == 6 and r["loss_first"] == pytest.approx(loss["loss"][0], abs=1e-4)
    assert set(r["index_grad_share"]) == set(SOURCES)
    assert r["image_normalisation"] == "all 30 images are 16x16 (used as they are)"
    for name in ("report.md", "model.safetensors", "checkpoint.safetensors", "manifest.json", "scores.json",
                 "loss.png", *[f"samples/{s}.png" for s in SOURCES]):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "not the world" in report and "nearest_source_acc" in report and "95% CI" in report
    assert "'studio north picture" in report  # the captions sampled from the source's own records
    assert cli("verify", out)[0] == 0


def test_world_ground_truth_is_recognised(own, tmp_path):
    data, _, _ = own
    world = generate_world(WorldConfig(per_artist=1, n_stock=1, per_person=1, dup_groups=1, dup_copies=2),
                           tmp_path / "w", progress=False)
    assert has_world_truth(load_dataset(world, image_size=16).records)
    assert not has_world_truth(load_dataset(data, image_size=16).records)


def test_optional_fields_and_bom_crlf_metadata(own, tmp_path):
    data, _, _ = own
    plain = load_dataset(data, image_size=16)
    assert {r["duplicate_group"] for r in plain.records} == {-1}  # null and absent: no group
    assert not plain.has_duplicate_groups
    variant = make_folder(tmp_path / "bom", bom=True)
    assert (variant / "metadata.jsonl").read_bytes()[:3] == b"\xef\xbb\xbf"
    other = load_dataset(variant, image_size=16)
    assert other.records == plain.records
    assert torch.equal(other.images, plain.images)


def test_audit_memorization_on_own_data(own):
    _, out, _ = own
    code, r = cli("audit-memorization", out, "-n", "1", "--steps", "2", "--json")
    assert code == 0, r
    assert r["scored_against"] == "own-data" and r["spaces"] == ["pixel"]
    assert r["captions"] == 25 and 0 <= r["extraction_rate"] <= 1
    assert "extraction_rate_planted" not in r and "no record names a duplicate_group" in r["not_measured"]
    assert (out / "memorization" / "audit_grid.png").is_file()
    assert cli("verify", out)[0] == 0  # re-sealed


class Copier:
    """A 'model' that returns the training image of ``caption`` and noise for every other caption."""

    def __init__(self, dataset, caption):
        self.image = dataset.images[[r["caption"] for r in dataset.records].index(caption)]

    def generate(self, prompts, *, seed, steps, guidance):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randint(0, 256, (len(prompts), 3, 16, 16), generator=g, dtype=torch.uint8)
        return torch.stack([self.image if p == DUP_CAPTION else noise[i] for i, p in enumerate(prompts)])


def test_audit_lists_and_shows_extracted_images_beside_their_training_image(own, tmp_path, monkeypatch):
    from govlab.memorization.audit import audit
    from govlab.models.diffusion import TextToImage
    from govlab.studies.audit import audit_run

    data, out, _ = own
    run = tmp_path / "run"
    shutil.copytree(out, run)
    dataset = load_dataset(data, image_size=16)
    monkeypatch.setattr(TextToImage, "load", classmethod(lambda cls, path: Copier(dataset, DUP_CAPTION)))
    r = audit_run(run, n=2, steps=2, progress=False)
    assert [it["caption"] for it in r["reproduced"]] == [DUP_CAPTION]
    assert r["reproduced"][0]["file"] == "photos/dup.png" and r["reproduced"][0]["copies"] == 6
    assert r["extraction_rate"] == round(1 / 25, 4)
    grid = np.asarray(Image.open(r["extracted_grid"]))[::4, ::4]  # undo the 4x nearest upscaling
    train = dataset.images[[x["caption"] for x in dataset.records].index(DUP_CAPTION)].permute(1, 2, 0).numpy()
    assert np.array_equal(grid[1:17, 1:17], train) and np.array_equal(grid[1:17, 18:34], train)
    # a planted rate where duplicate groups are given
    for rec in dataset.records:
        rec["duplicate_group"] = 0 if rec["caption"] == DUP_CAPTION else -1
    result, _ = audit(Copier(dataset, DUP_CAPTION), dataset, n=2, steps=2, progress=False)
    assert result["extraction_rate_planted"] == 1.0 and result["extraction_rate_others"] == 0.0


def test_sample_query_attest_attenuate_and_the_explorer(own, tmp_path):
    from govlab.explore.runs import band_timeline, load_runs, source_band

    data, out, _ = own
    code, sample = cli("sample", out, "--prompt", DUP_CAPTION, "-n", "2", "--steps", "2", "--out", tmp_path / "s.png",
                       "--json")
    assert code == 0 and sample["n"] == 2 and (tmp_path / "s.png").stat().st_size > 0
    code, q = cli("query", out, "--source", "studio_north", "--json")
    assert code == 0 and q["source"] == "studio_north" and q["bands"]
    code, a = cli("attest", out, "--json")
    assert code == 0 and set(a["sources"]) == set(SOURCES) and a["records"] == 30
    assert a["sources"]["archive"]["licenses"] == {"CC-BY-4.0": 8, "CC0-1.0": 6}
    code, att = cli("attenuate", out, "--source", "studio_north", "--factor", "0", "--out", tmp_path / "att", "--json")
    assert code == 0, att
    assert set(att["after"]) >= {"nearest_source_acc_source", "chance_nearest_source"}
    assert cli("verify", tmp_path / "att")[0] == 0
    runs, errors = load_runs([out])
    assert errors == [] and runs[0].sources == sorted(SOURCES)
    df = source_band(runs[0], "grad_norm_sq", runs[0].checkpoints[-1])
    assert set(df["source"]) == set(SOURCES)
    assert not band_timeline(runs[0], "update_share", "archive").empty
    before, after = runs[0].preview("studio_north", 0.0)  # prompts: the source's own captions
    assert before.shape == after.shape == (6, 3, 16, 16)


def test_a_failure_after_training_keeps_a_verifiable_run(own, tmp_path, monkeypatch):
    import govlab.run
    from govlab.provenance.manifest import verify

    data, _, _ = own
    cfg = from_dict({"data": str(data), "train": {"steps": 2, "checkpoint_every": 2, "warmup_steps": 1}},
                    base=load_config("smoke"))

    def broken(*args, **kwargs):
        raise ValueError("torch.cat(): expected a non-empty list of Tensors")

    monkeypatch.setattr(govlab.run, "score_data", broken)
    with pytest.raises(GovlabError) as e:
        govlab.run.train_run(cfg, tmp_path / "run", progress=False)
    assert "trained 2 steps and saved" in str(e.value) and "scores and samples" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    run = tmp_path / "run"
    for name in ("model.safetensors", "checkpoint.safetensors", "report.md", "manifest.json", "loss.json"):
        assert (run / name).is_file(), name
    assert "expected a non-empty list" in (run / "report.md").read_text()
    assert json.loads((run / "scores.json").read_text())["not_scored"]["scores and samples"].startswith("ValueError")
    assert verify(run) == []


def test_empty_captions_refused_before_anything_is_written(own, tmp_path):
    from govlab.run import train_run

    data, _, _ = own
    folder = tmp_path / "d"
    shutil.copytree(data, folder)
    meta = folder / "metadata.jsonl"
    lines = meta.read_text().splitlines()
    meta.write_text("".join(json.dumps({**json.loads(x), "caption": " "}) + "\n" for x in lines))
    with pytest.raises(GovlabError, match="every caption is empty"):
        train_run(from_dict({"data": str(folder)}, base=load_config("smoke")), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_single_source_folder_trains_and_the_report_says_what_does_not_apply(own, tmp_path):
    from govlab.run import train_run

    data, _, _ = own
    folder = tmp_path / "one"
    shutil.copytree(data, folder)
    meta = folder / "metadata.jsonl"
    meta.write_text("".join(x + "\n" for x in meta.read_text().splitlines() if '"archive"' in x))
    cfg = from_dict({"data": str(folder), "train": {"steps": 2, "checkpoint_every": 2, "warmup_steps": 1,
                                                    "batch_size": 8}, "eval": {"steps": 2}}, base=load_config("smoke"))
    r = train_run(cfg, tmp_path / "run", progress=False)
    assert r["scored_against"] == "own-data" and r["sources"] == ["archive"] and r["records"] == 14
    assert r["nearest_source_acc"] is None and r["nearest_train_distance"] > 0
    assert "does not apply" in (tmp_path / "run" / "report.md").read_text()
    losses = json.loads((tmp_path / "run" / "loss.json").read_text())["loss"]
    again = train_run(cfg, tmp_path / "run", resume=True, progress=False)  # the loss resumes with the checkpoint
    assert json.loads((tmp_path / "run" / "loss.json").read_text())["loss"] == losses and len(losses) == 2
    assert again["loss_first"] == r["loss_first"]


def test_a_single_source_is_scored_without_a_source_figure():
    class One:
        sources = ["only"]
        records = [{"source_id": "only", "caption": f"c{i}"} for i in range(4)]
        images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)

    s = score_own_images(One.images[:2], [{"source_id": "only"}] * 2, One())
    assert s["nearest_source_acc"] is None and s["n_sources"] == 1
    assert s["nearest_train_distance"] == 0.0  # the generations are training images


def test_mixed_image_sizes_are_normalised_and_stated(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    wide = np.zeros((16, 24, 3), np.uint8)
    wide[:, :4], wide[:, 4:20], wide[:, 20:] = (0, 0, 255), (255, 0, 0), (0, 0, 255)  # red square, blue sides
    Image.fromarray(wide).save(root / "wide.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "small.png")
    Image.new("L", (16, 16), 128).save(root / "grey.png")
    meta = [{"file_name": f, "caption": f, "source_id": s, "categories": ["style"], "license": "x",
             "opt_out": False} for f, s in (("wide.png", "a"), ("small.png", "b"), ("grey.png", "b"))]
    (root / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    ds = load_dataset(root, image_size=16)
    n = ds.normalisation
    assert (n["cropped"], n["resized"], n["converted"]) == (1, 1, 1)
    assert n["sizes"] == {"24x16": 1, "8x8": 1, "16x16": 1}
    assert "centre-cropped" in n["text"] and "1 of 3 images resized to 16x16" in n["text"]
    assert (ds.images[0, 0] == 255).all() and (ds.images[0, 2] == 0).all()  # the blue sides were cropped off
