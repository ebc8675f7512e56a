"""Governed training on 2 gloo ranks equals 1 rank at the same global batch; bad launches refused."""

import numpy as np
import pytest

from govlab.bench.distributed import (bench_config, compare, index_arrays, max_rel_diff, run_ranks,
                                      train_governed)
from govlab.config import from_dict
from govlab.errors import GovlabError

TINY = {"model": {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "head_dim": 8, "norm_groups": 4},
        "train": {"batch_size": 12}}


@pytest.fixture(scope="module")
def tiny():
    return bench_config(steps=4, every=2, overrides=TINY)


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    work = tmp_path_factory.mktemp("distributed")
    train_governed(tiny, work / "one")
    run_ranks(tiny, work / "two", 2)
    run_ranks(tiny, work / "cut", 2, until=2)  # stopped at a checkpoint under 2 ranks ...
    train_governed(tiny, work / "cut", resume=True)  # ... resumed under 1
    return work


def test_two_ranks_equal_one(runs):
    got = compare(runs / "one", runs / "two")
    assert got["weights_max_rel_diff"] <= 1e-5
    assert got["index_max_rel_diff"] <= 1e-5
    assert got["flags_equal"] and got["flags"] > 0  # the monitor flagged, and every rank the same rows


def test_resume_under_other_world_size(runs):
    got = compare(runs / "one", runs / "cut")
    assert got["weights_max_rel_diff"] <= 1e-5 and got["index_max_rel_diff"] <= 1e-5 and got["flags_equal"]


def test_index_names_the_ranks(runs):
    import json

    import xarray as xr

    with xr.open_dataset(runs / "two" / "index.nc") as ds:
        d = json.loads(ds.attrs["distributed_json"])
    assert d["world_sizes"] == [[0, 2]] and d["backend"] == "gloo" and d["not_reduced"] == []
    with xr.open_dataset(runs / "one" / "index.nc") as ds:
        assert "distributed_json" not in ds.attrs  # one process: the index as before
    assert max_rel_diff(index_arrays(runs / "one"), index_arrays(runs / "one")) == 0.0
    assert max_rel_diff({"x": np.ones(2)}, {"x": np.array([1.0, 1.5])}) == 0.5


def test_rank_count_must_divide_batch(tiny, tmp_path):
    cfg = from_dict({"train": {"batch_size": 9}}, base=tiny)
    with pytest.raises(GovlabError, match="batch_size 9 is not divisible by the 2 ranks"):
        run_ranks(cfg, tmp_path / "run", 2)
    assert not (tmp_path / "run").exists()


def test_ranks_with_different_configs_refused(tiny, tmp_path):
    other = from_dict({"train": {"seed": 1}}, base=tiny)
    with pytest.raises(GovlabError, match="different configs or data .*rank 0: config .*rank 1: config"):
        run_ranks([tiny, other], tmp_path / "run", 2)
    assert not (tmp_path / "run").exists()


def test_regularize_refused_on_several_ranks(tiny, tmp_path):
    cfg = from_dict({"memorization": {"intervention": "regularize"}}, base=tiny)
    with pytest.raises(GovlabError, match="'regularize' is not supported under 2 ranks"):
        run_ranks(cfg, tmp_path / "run", 2)
    assert not (tmp_path / "run").exists()
