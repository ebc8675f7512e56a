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
