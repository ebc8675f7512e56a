"""Both provenance modes on the foreign-loop path (``govlab.Governance``) of an SD3-style MMDiT."""

import copy

import numpy as np
import pytest
import torch
import xarray as xr


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    from datasets import load_dataset

    from govlab.testing import build_tiny_pipeline, write_tiny_imagefolder

    base = tmp_path_factory.mktemp("foreign-modes")
    data_dir = write_tiny_imagefolder(base / "data", 16)
    return base, build_tiny_pipeline(base / "sd3", "sd3"), load_dataset("imagefolder", data_dir=str(data_dir),
                                                                      split="train")


def _run(den, data, text, tok, out, prov, steps, every):
    """``steps`` governed steps (routing on, monitor off) on fixed batches; a checkpoint every ``every``."""
    from govlab.api import Governance, GovernanceConfig
    from govlab.bench.foreign import batch_inputs, per_sample

    gov = Governance(den, data, out, config=GovernanceConfig(memorization=None, provenance=prov))
    opt = gov.optimizer(lr=1e-3)
    hooked = []
    for step in range(steps):
        rows = [(3 * step + i) % len(data) for i in range(6)]
        batch = gov.begin({"row": torch.tensor(rows)})
        d, x, t, cond, target = batch_inputs(den, text, tok, gov.records, batch["row"].tolist(), seed=step)
        gov.loss(per_sample(d, x, t, cond, target)).backward()
        hooked.append(bool(gov.writer.layer_shares.handles))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % every == 0:
            gov.checkpoint()
    return gov, hooked


def test_sampled_and_exact_modes_on_the_foreign_loop(sd3):
    """The exact mode's figures at every step; the sampled mode's equal on its exact first steps
    (standard error 0), estimates with ``*_se`` after them, the layer hooks on the model only on the
    steps it computes, the exact counts at every step, and a source with no rows exactly zero."""
    from govlab.bench.foreign import load
    from govlab.provenance.config import ProvenanceConfig
    from govlab.provenance.writer import INDEX, step_sampled

    base, pipe, data = sd3
    den, text, tok, _, _ = load(pipe)
    den2 = copy.deepcopy(den)
    exact_cfg = ProvenanceConfig(enabled=True, mode="exact")
    sampled_cfg = ProvenanceConfig(enabled=True, mode="sampled", sample_rate=0.5, sample_seed=3, exact_first=2)
    steps, every = 6, 2
    gov_e, hooked_e = _run(den, data, text, tok, base / "exact", exact_cfg, steps, every)
    gov_s, hooked_s = _run(den2, data, text, tok, base / "sampled", sampled_cfg, steps, every)
    assert gov_e.writer.layer_shares is not None  # the one-backward path, both modes
    computed = [step_sampled(sampled_cfg, s) for s in range(steps)]
    assert all(hooked_e) and hooked_s == computed and not all(computed[2:])
    with xr.open_dataset(base / "exact" / INDEX) as e, xr.open_dataset(base / "sampled" / INDEX) as s:
        e, s = e.load(), s.load()
    assert e.attrs["mode"] == "exact" and "grad_norm_sq_se" not in e
    assert s.attrs["mode"] == "sampled" and s.attrs["sample_rate"] == 0.5
    for k in ("grad_norm_sq", "update_share"):
        assert f"{k}_se" in s and np.isfinite(s[k].values).all() and (s[f"{k}_se"].values >= 0).all()
        first = dict(checkpoint=every)  # the exact first steps: the exact figures, no error
        scale = float(np.abs(e[k].sel(first)).max())
        assert float(np.abs(s[k].sel(first) - e[k].sel(first)).max()) <= 1e-5 * scale
        assert float(s[f"{k}_se"].sel(first).max()) == 0.0
    np.testing.assert_array_equal(s["steps_seen"].values, e["steps_seen"].values)
    np.testing.assert_array_equal(s["samples_seen"].values, e["samples_seen"].values)
    assert int(s["steps_sampled"].sum()) == sum(computed)
    unseen = e["steps_seen"].values == 0  # (source, checkpoint) with no rows: zero in both modes
    for k in ("grad_norm_sq", "update_share", "grad_norm_sq_se", "update_share_se"):
        assert (s[k].values[unseen[:, None, :].repeat(s.sizes["band"], 1)] == 0).all()
    assert e["grad_norm_sq"].sum() > 0
