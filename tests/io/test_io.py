"""Atomic writes: all or nothing, with ordinary file permissions."""

import os
import stat

import pytest

from govlab.io import atomic_path, write_json


def test_atomic_write_is_all_or_nothing_with_ordinary_permissions(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == '{\n  "x": 1\n}\n' and os.listdir(tmp_path) == ["a.json"]


def test_json_lines_reads_a_bom_and_crlf_and_names_a_bad_line(tmp_path):
    from govlab.errors import GovlabError
    from govlab.io import json_lines
    from govlab.tagging.tagger import read_untagged

    meta = tmp_path / "metadata.jsonl"
    meta.write_bytes(b'\xef\xbb\xbf{"file_name": "a.png", "caption": "x"}\r\n\r\n{"file_name": "b.png", "caption": "y"}\r\n')
    assert [(n, r["file_name"]) for n, _, r in json_lines(meta)] == [(1, "a.png"), (3, "b.png")]
    assert [r["file_name"] for r in read_untagged(tmp_path)] == ["a.png", "b.png"]  # the tagger reads it too
    meta.write_text('{"file_name": "a.png"}\n[1, 2]\n')
    with pytest.raises(GovlabError, match=r"metadata\.jsonl line 2: expected a JSON object, got list"):
        list(json_lines(meta))
