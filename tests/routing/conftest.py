import random

import pytest
import torch

from govlab.config import from_dict
from govlab.data.world import CATEGORIES
from govlab.models.diffusion import to_float
from govlab.testing import TINY_EVAL, TINY_MODEL, TINY_ROUTING, TINY_TRAIN, one_thread

TINY = {"model": TINY_MODEL, "routing": TINY_ROUTING, "train": TINY_TRAIN, "eval": TINY_EVAL}


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_cfg(smoke_cfg):
    return from_dict({"name": "tiny-routed", **TINY}, base=smoke_cfg)


@pytest.fixture
def mixed_records():
    return random_records


@pytest.fixture
def batch_of():
    return make_batch


def random_records(dataset, n: int, seed: int) -> list[dict]:
    """Real records with random, mixed category sets and sources (every kind of route); every
    third keeps its own source and categories, so that caption slots see their own artists too."""
    rng = random.Random(seed)
    sources = ["artist_0", "artist_1", "artist_2", "artist_3", "stockco", "webcrawl"]
    out = []
    for i in range(n):
        rec = dict(rng.choice(dataset.records))
        if i % 3:
            pool = CATEGORIES if i % 2 else CATEGORIES[:3]  # half of them reach the shared bands
            rec["categories"] = rng.sample(pool, rng.randint(1, 3))
            rec["source_id"] = rng.choice(sources)
        rec["_row"] = dataset.records.index(next(r for r in dataset.records if r["file_name"] == rec["file_name"]))
        out.append(rec)
    return out


def make_batch(model, dataset, records, dtype=torch.float32, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, s = len(records), dataset.images.shape[-1]
    return {"x0": to_float(dataset.images[[r["_row"] for r in records]]).to(dtype),
            "tokens": model.tokenizer([r["caption"] for r in records]),
            "noise": torch.randn(b, 3, s, s, generator=g).to(dtype),
            "timesteps": torch.randint(0, 1000, (b,), generator=g),
            "weights": torch.rand(b, generator=g).to(dtype) + 0.5}
