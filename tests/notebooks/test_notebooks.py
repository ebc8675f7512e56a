"""Every notebook under notebooks/ runs end to end in quick mode (papermill, the venv's python3 kernel)
and shows what it promises: one test, one row per notebook in ``NOTEBOOKS``.

To add a notebook: add a row (its quick-mode parameters, the fixtures that prepare its caches, and a
check of the executed notebook). A notebook with no row fails here, and so does a row with no notebook;
notebooks run by another test are listed in ``ELSEWHERE`` with that test.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat
import papermill as pm
import pytest
import torch

from govlab.config import from_dict, load_config, read_yaml
from govlab.data.cache import run_dataset
from govlab.models.diffusion import TextToImage
from govlab.testing import TINY_EVAL, TINY_MODEL, TINY_ROUTING, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2] / "notebooks"
TMP = object()  # a parameter's value: the test's tmp_path (the notebook's RUN_DIR)


@dataclass(frozen=True)
class Executed:
    """An executed notebook: its outputs, and the test's tmp_path (its cwd and RUN_DIR)."""

    nb: nbformat.NotebookNode
    tmp: Path

    @property
    def outputs(self) -> list[dict]:
        return [o for c in self.nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]

    def text(self, mime: str = "text/plain") -> str:
        """Printed text, or else the ``mime`` form of each output, one output a line."""
        return "\n".join(o.get("text", "") or str(o.get("data", {}).get(mime, "")) for o in self.outputs)


@dataclass(frozen=True)
class Row:
    parameters: dict  # papermill parameters besides QUICK=True (TMP: the test's tmp_path)
    check: Callable[[Executed], None]
    fixtures: tuple[str, ...] = ()  # built before the notebook runs (caches it reuses)
    env: dict = field(default_factory=dict)  # environment variables (a value naming a fixture: its path)


# -- the checks, one per notebook ------------------------------------------------------------------------
def check_world_and_training(ex: Executed):
    assert (ex.tmp / "smoke" / "report.md").is_file()


def check_routing(ex: Executed):
    text = ex.text()
    err = float(re.search(r"max relative error, routed vs per-sample reference: (\S+)", text).group(1))
    assert err <= 1e-5
    for line in ("(a) artist_0 style accuracy", "(c) unrouted zeroing", "watermark rate: routed",
                 "identity rate: routed", "band dropped", "over 2 training seeds: ["):
        assert line in text
    assert "(b) retrained without artist" in text and "QUICK mode" in text


def check_memorization(ex: Executed):
    results = json.loads((ex.tmp / "memorization" / "experiment.json").read_text())
    assert set(results) == {"none", "attenuate", "regularize", "drop", "deduplicate"}
    for r in results.values():
        assert r["curves"]
        assert Path(r["run"], "memorization", "audit_grid.png").is_file()
        # the rates recomputed from the run's files: each audited caption's saved ratios against the
        # 1/3 criterion, planted by the world's ground truth for that training row
        run = Path(r["run"])
        items = json.loads((run / "memorization" / "audit.json").read_text())["items"]
        cfg = from_dict(read_yaml(run / "config.yaml"))
        data = run_dataset(cfg, progress=False)
        records = data.records
        planted = [records[it["row"]]["duplicate_group"] >= 0 for it in items]
        assert len(items) == 30 and 0 < sum(planted) < len(items)
        # the saved pixel ratios: the run's model regenerates the captions (n=1, one batch, seed 0), each
        # generation's l2 to its own training image(s) / to the nearest other image
        model = TextToImage.load(run / "model.safetensors")
        gens = model.generate([it["caption"] for it in items], seed=0, steps=cfg.eval.steps,
                              guidance=cfg.eval.guidance).flatten(1).double()
        train = data.images.flatten(1).double()
        for g, it in zip(gens, items):
            own_images = {data.images[i].numpy().tobytes() for i, rec in enumerate(records)
                          if rec["caption"] == it["caption"]}
            own = torch.tensor([x.numpy().tobytes() in own_images for x in data.images])
            d = (train - g).norm(dim=1)
            assert it["pixel_ratio"] == pytest.approx(float(d[own].min() / d[~own].min()), abs=1e-3), it
        for space, suffix in (("pixel", ""), ("feature", "_feature")):
            hit = [it[f"{space}_ratio"] < 1 / 3 for it in items]
            assert r[f"extraction_rate{suffix}"] == round(sum(hit) / len(hit), 4), space
            hit_planted = [h for h, p in zip(hit, planted) if p]
            assert r[f"extraction_rate_planted{suffix}"] == round(sum(hit_planted) / len(hit_planted), 4), space


def check_provenance(ex: Executed):
    text = ex.text()
    assert "QUICK mode" in text
    proofs = re.findall(r"opt-out proof (\S+): max grad_norm_sq from step \d+ on = (\S+) .*zero influence: (\S+)", text)
    assert [p[0] for p in proofs] == ["artist_5", "artist_3"]
    assert all(float(v) == 0.0 and z == "True" for _, v, z in proofs)
    assert "verify after attestation: every artifact matches manifest.json" in text
    assert "artist_2 style accuracy: before" in text
    assert (ex.tmp / "provenance" / "attestation.md").is_file()


def check_attribution(ex: Executed, compare_cache: Path):
    text = ex.text()
    assert "QUICK mode" in text and "LDS x100: structural" in text and "dtrak" in text
    for q in ("named", "unnamed", "images"):
        assert f"--- {q}" in text
    assert "name_baseline" in text and "lds_ci_low" in text
    assert any(p.name == "model.safetensors" for p in (compare_cache / "attribution/retrain").rglob("*"))


def check_lineage(ex: Executed):
    html = "".join(o.get("data", {}).get("text/html", "") for o in ex.outputs)
    images = [o for o in ex.outputs if "image/png" in o.get("data", {})]
    assert "NULL threshold" in html and "ratio next/closest" in html
    assert len(images) >= 3  # pool heatmap, k ablation, countermeasure curves


def check_removal(ex: Executed):
    text = ex.text("text/markdown")
    assert "QUICK mode" in text and "(b) retrained without the artist (oracle)" in text
    assert "slot within the oracle on all five:" in text and "| confined |" in text
    assert (ex.tmp / "removal.png").stat().st_size > 1000


def tiny_routed_overrides() -> dict:
    """tests/routing's tiny config (its cached trainings are the ones 07_removal reuses)."""
    cfg = from_dict({"name": "tiny-routed", "model": TINY_MODEL, "routing": TINY_ROUTING, "train": TINY_TRAIN,
                     "eval": TINY_EVAL}, base=load_config("smoke"))
    return json.loads(json.dumps(cfg.to_dict()))


NOTEBOOKS = {
    "01_world_and_training.ipynb": Row({"RUN_DIR": TMP}, check_world_and_training),
    "02_routing.ipynb": Row({"SEEDS": 2}, check_routing),
    "03_memorization.ipynb": Row({"RUN_DIR": TMP}, check_memorization),
    "04_provenance_index.ipynb": Row({"RUN_DIR": TMP}, check_provenance),
    # the retrainings of the session's quick comparison (tests/attribution: same config, same cache)
    "05_structural_vs_statistical.ipynb": Row({}, check_attribution, ("compare_cache",),
                                              {"GOVLAB_CACHE": "compare_cache"}),
    # the quick zoo and its features, cached (built by tests/lineage's fixtures, or here)
    "06_lineage.ipynb": Row({}, check_lineage),
    "07_removal.ipynb": Row({"PER_PROMPT": 1, "ESD_ITERATIONS": 2, "OVERRIDES": tiny_routed_overrides},
                            check_removal),
}
ELSEWHERE = {  # notebooks another test executes
    "workshop/*.ipynb": "tests/workshop/test_workshop.py (each lesson on a prepared workshop folder)",
    "workshop/solutions/*.ipynb": "tests/workshop/test_workshop.py (copied beside the lessons by prepare)",
}


def found() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def test_every_notebook_has_a_row_and_every_row_a_notebook():
    on_disk = found()
    assert not set(NOTEBOOKS) - set(on_disk), f"rows with no notebook: {sorted(set(NOTEBOOKS) - set(on_disk))}"
    loose = [n for n in on_disk if n not in NOTEBOOKS and not any(Path(n).match(g) for g in ELSEWHERE)]
    assert not loose, f"notebooks with no row in NOTEBOOKS (tests/notebooks/test_notebooks.py): {loose}"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_in_quick_mode(name, tmp_path, monkeypatch, artifacts, request):
    row = NOTEBOOKS[name]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest and sane on shared CPUs
    fixtures = {f: request.getfixturevalue(f) for f in row.fixtures}
    for key, value in row.env.items():
        monkeypatch.setenv(key, str(fixtures.get(value, value)))
    parameters = {"QUICK": True, **{k: str(tmp_path) if v is TMP else v() if callable(v) else v
                                    for k, v in row.parameters.items()}}
    out = artifacts / f"executed_{name}"
    pm.execute_notebook(str(ROOT / name), str(out), kernel_name="python3", parameters=parameters,
                        progress_bar=False, cwd=str(tmp_path))
    executed = Executed(nbformat.read(out, as_version=4), tmp_path)
    args = [fixtures[f] for f in row.fixtures]
    row.check(executed, *args)
