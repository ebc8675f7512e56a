import json
import shutil

import pytest
from PIL import Image

from govlab.data import WorldConfig, generate_world, load_dataset
from govlab.errors import GovlabError

TINY = WorldConfig(per_artist=2, n_stock=1, per_person=1, dup_groups=1, dup_copies=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(TINY, tmp_path_factory.mktemp("w"), progress=False)


@pytest.fixture
def folder(world, tmp_path):
    shutil.copytree(world, tmp_path / "d")
    return tmp_path / "d"


def edit(folder, line: int, change):
    meta = folder / "metadata.jsonl"
    recs = [json.loads(x) for x in meta.read_text().splitlines()]
    change(recs[line - 1])
    meta.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_loads_the_world_and_keeps_extra_fields(folder):
    edit(folder, 1, lambda r: r.update(photographer="someone"))
    ds = load_dataset(folder, image_size=16)
    assert ds.images.shape == (len(ds), 3, 16, 16)
    assert ds.records[0]["photographer"] == "someone"
    assert ds.records[0]["artist"] == "artist_0"


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("caption"), r"line 3: missing required field 'caption'"),
    (lambda r: r.update(opt_out="no"), r"line 3: field 'opt_out' must be bool"),
    (lambda r: r.update(categories="style"), r"line 3: field 'categories' must be list"),
    (lambda r: r.update(categories=["style", "mood"]), r"line 3: unknown category 'mood'"),
    (lambda r: r.update(file_name="../escape.png"), r"line 3: file_name '../escape.png' escapes"),
    (lambda r: r.update(file_name="/etc/passwd"), r"line 3: file_name '/etc/passwd' escapes"),
    (lambda r: r.update(file_name="images/missing.png"), r"line 3: file 'missing.png' not found"),
])
def test_each_bad_record_is_one_clear_error(folder, change, message):
    edit(folder, 3, change)
    with pytest.raises(GovlabError, match=message) as e:
        load_dataset(folder, image_size=16)
    assert "metadata.jsonl" in str(e.value)


def test_unreadable_and_oversized_images(folder):
    rec = json.loads((folder / "metadata.jsonl").read_text().splitlines()[1])
    (folder / rec["file_name"]).write_bytes(b"not a png")
    with pytest.raises(GovlabError, match=r"line 2: cannot read image"):
        load_dataset(folder, image_size=16)
    Image.new("RGB", (200, 200)).save(folder / rec["file_name"])
    with pytest.raises(GovlabError, match=r"line 2: image .* is 200x200, far larger"):
        load_dataset(folder, image_size=16)


def test_bad_json_and_missing_metadata(folder, tmp_path):
    meta = folder / "metadata.jsonl"
    meta.write_text(meta.read_text() + "{not json\n")
    with pytest.raises(GovlabError, match=r"line \d+: not valid JSON"):
        load_dataset(folder, image_size=16)
    with pytest.raises(GovlabError, match="metadata.jsonl: not found"):
        load_dataset(tmp_path, image_size=16)


def test_smaller_images_are_resized(folder):
    rec = json.loads((folder / "metadata.jsonl").read_text().splitlines()[0])
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / rec["file_name"])
    ds = load_dataset(folder, image_size=16)
    assert ds.images[0].shape == (3, 16, 16) and int(ds.images[0, 0].float().mean()) == 255


@pytest.mark.parametrize("value, group", [(None, -1), ("absent", -1), (-1, -1), (3, 3)])
def test_duplicate_group_takes_json_forms_of_none(folder, value, group):
    edit(folder, 2, lambda r: r.pop("duplicate_group") if value == "absent" else r.update(duplicate_group=value))
    ds = load_dataset(folder, image_size=16)
    assert ds.records[1]["duplicate_group"] == group  # one form inside: no None is ever compared


@pytest.mark.parametrize("value", ["0", 1.5, True, -2])
def test_a_bad_duplicate_group_is_one_clear_error(folder, value):
    edit(folder, 2, lambda r: r.update(duplicate_group=value))
    with pytest.raises(GovlabError, match=r"line 2: field 'duplicate_group' must be an integer >= 0, null"):
        load_dataset(folder, image_size=16)


def test_bom_and_crlf_metadata_read_as_plain(folder):
    plain = load_dataset(folder, image_size=16)
    meta = folder / "metadata.jsonl"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes().replace(b"\n", b"\r\n"))
    assert load_dataset(folder, image_size=16).records == plain.records
