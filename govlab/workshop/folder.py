"""``govlab workshop prepare DIR``: everything the four lessons need, trained once and cached.

What it builds (into the govlab cache, keyed by the recipes below, then copied into ``DIR``):

- ``runs/routed`` and ``runs/unrouted``: the same small model trained with depth-selective routing
  and without it (same expanded architecture, plain gradients), each with its provenance index;
- ``runs/memorization-none`` and ``runs/memorization-drop``: a world of planted duplicates, trained
  with the memorization monitor (regeneration detector, every caption watched), weights kept at
  every checkpoint; ``none`` only watches, ``drop`` excludes a flagged image from later epochs;
- ``lineage/pool/base_*``: three base models, and ``lineage/suspects/suspect_*``: three unlabelled
  models, two fine-tuned from a base and one trained from scratch; their answers go to
  ``answers/lineage.json``, outside the folder the lessons are served from.

Then the lessons (``notebooks/workshop``) are copied to ``DIR/lessons``, their solutions to
``DIR/solutions``, each lesson is executed once (its time is ``lesson_seconds``; this also fills
the sample caches the lessons read), and ``DIR/workshop.json`` is written last: a folder without
it is not prepared.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from govlab.config import RunConfig, from_dict, load_config
from govlab.data.cache import build_once, cache_dir
from govlab.data.world import WORLD_VERSION
from govlab.errors import GovlabError
from govlab.io import sha256_json, write_json

FORMAT = 1  # of the prepared folder; part of the cache key
MANIFEST = "workshop.json"
LESSONS = ("01_routing", "02_memorization", "03_rights_holder", "04_lineage_detective")
ARTIST = "artist_0"  # lesson 1's default artist
LESSON_SOURCES = Path(__file__).resolve().parents[2] / "notebooks" / "workshop"


WORLD = 1  # world version 1: each artist's palette is its own, so a small model learns the styles in minutes


def _small(quick: bool) -> dict:
    """The model every workshop run shares: the smoke preset's (16x16 images)."""
    return {"model": {"channels": [16, 32, 32], "text_dim": 32, "text_layers": 1, "head_dim": 8},
            "train": {"threads": 1}, "eval": {"per_prompt": 1 if quick else 2, "steps": 4 if quick else 8}}


def routing_configs(quick: bool = False) -> dict[str, RunConfig]:
    """Lesson 1 and 3: a routed and an unrouted run with the provenance index (exact: every step)."""
    steps = 24 if quick else 300
    base = from_dict({**_small(quick), "name": "routed", "world": {"version": WORLD}, "routing": {"mode": "routed"},
                      "provenance": {"enabled": True, "mode": "exact"},
                      "train": {"steps": steps, "batch_size": 16 if quick else 32, "warmup_steps": 5 if quick else 20,
                                "checkpoint_every": steps // 4, "threads": 1}},
                     base=load_config("smoke"))
    return {"routed": base,
            "unrouted": from_dict({"name": "unrouted", "routing": {"mode": "unrouted"}}, base=base)}


def memorization_configs(quick: bool = False) -> dict[str, RunConfig]:
    """Lesson 2: planted duplicates (the ``memorization`` preset's world, smaller), the monitor
    watching every caption with the regeneration detector; ``none`` and ``drop``."""
    steps, every = (24, 8) if quick else (400, 50)
    world = ({"version": WORLD, "per_artist": 6, "n_stock": 4, "per_person": 2, "dup_groups": 2, "dup_copies": 8, "caption_detail": 0.5}
             if quick else {"version": WORLD, "per_artist": 8, "n_stock": 6, "per_person": 3, "dup_groups": 4, "dup_copies": 20,
                            "caption_detail": 0.5})
    base = from_dict({**_small(quick), "name": "memorization", "world": world,
                      "train": {"steps": steps, "batch_size": 16 if quick else 32, "warmup_steps": 5 if quick else 30,
                                "checkpoint_every": every, "threads": 1},
                      "memorization": {"mode": "monitor", "detector": "regeneration", "watch": "all",
                                       "every": every, "start": every, "seeds": 1 if quick else 2, "steps": 8}},
                     base=load_config("smoke"))
    return {i: from_dict({"name": f"memorization-{i}", "memorization": {"intervention": i}}, base=base)
            for i in ("none", "drop")}


def lineage_recipes(quick: bool = False) -> dict[str, dict]:
    """Lesson 4: three bases (seeds), two fine-tunes of bases and one model trained from scratch.
    ``parent`` None: from scratch; ``answer``: the base the lesson's verdict is checked against."""
    steps, ft = (20, 5) if quick else (200, 40)
    train = {"steps": steps, "batch_size": 16 if quick else 32, "lr": 3e-3, "warmup_steps": 5,
             "checkpoint_every": steps, "threads": 1}
    world = {"version": WORLD, "per_artist": 24, "n_stock": 16, "per_person": 6, "dup_groups": 2, "dup_copies": 6}
    new_world = {"seed": 10, "n_artists": 2, "per_artist": 30, "n_stock": 15, "per_person": 0,
                 "dup_groups": 0, "dup_copies": 0}
    tune = {"steps": ft, "lr": 3e-4, "warmup_steps": 2, "checkpoint_every": ft}

    def cfg(name, seed, **over):
        return {**_small(quick), "name": name, "world": {**world, **over.get("world", {})},
                "train": {**train, "seed": seed, **over.get("train", {})}}

    return {
        "base_a": {"config": cfg("base_a", 0), "parent": None},
        "base_b": {"config": cfg("base_b", 1), "parent": None},
        "base_c": {"config": cfg("base_c", 2), "parent": None},
        # the suspects' names say nothing; their order is fixed by the recipes, not alphabetical by answer
        "suspect_1": {"config": cfg("suspect_1", 101, world={**new_world, "seed": 11}, train=tune), "parent": "base_c"},
        "suspect_2": {"config": cfg("suspect_2", 7, world={"seed": 3}), "parent": None},
        "suspect_3": {"config": cfg("suspect_3", 103, world={**new_world, "seed": 12}, train=tune), "parent": "base_a"},
    }


def cache_key(quick: bool) -> str:
    return sha256_json({"format": FORMAT, "world": WORLD_VERSION, "quick": quick,
                        "routing": {k: asdict(c) for k, c in routing_configs(quick).items()},
                        "memorization": {k: asdict(c) for k, c in memorization_configs(quick).items()},
                        "lineage": lineage_recipes(quick)})[:16]


def _train_lineage(root: Path, quick: bool) -> dict:
    """Train the pool and the suspects into ``root/lineage``; returns the answers."""
    from govlab.data.cache import run_dataset
    from govlab.models.diffusion import TextToImage
    from govlab.train import Trainer

    answers = {}
    for name, r in lineage_recipes(quick).items():
        cfg = from_dict(r["config"])
        out = root / "lineage" / ("pool" if name.startswith("base") else "suspects") / name
        model = None
        if r["parent"] is not None:
            model = TextToImage.load(root / "lineage" / "pool" / r["parent"] / "model.safetensors")
        Trainer(cfg, run_dataset(cfg, progress=False), out, model=model, progress=False).fit()
        for extra in ("checkpoint.safetensors", "checkpoints", "events.jsonl"):  # a black box: weights only
            p = out / extra
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        if name.startswith("suspect"):
            answers[name] = r["parent"]  # None: trained from scratch, the NULL verdict
    return answers


def _job(kind: str, name: str, cfg, root: str, quick: bool) -> float:
    """Train one of the workshop's runs (or its lineage pool) into ``root``; its seconds."""
    from govlab.run import train_run

    start = time.perf_counter()
    if kind == "run":
        train_run(cfg, Path(root) / "runs" / name, progress=False)
    else:
        write_json(Path(root) / "answers" / "lineage.json", _train_lineage(Path(root), quick))
    return round(time.perf_counter() - start, 1)


def build(root: Path, *, quick: bool, progress: bool = True) -> None:
    """Train every run of the workshop into ``root`` (an empty folder). The runs are independent,
    each on one thread, so they go through a sweep (``govlab.sweep``: side by side on local Ray,
    one CPU each, or one after another without Ray), with the bits of a serial build."""
    from govlab.eval.classifiers import load_evaluator
    from govlab.sweep import Job, Sweep

    start = time.perf_counter()
    load_evaluator(16, progress=False)  # the world's evaluator: scores and lineage features
    seconds = {"evaluator": round(time.perf_counter() - start, 1)}
    jobs = [*(("run", n, c) for n, c in routing_configs(quick).items()),
            *(("run", c.name, c) for c in memorization_configs(quick).values()), ("lineage", "lineage", None)]
    took = Sweep().run([Job(_job, (kind, name, cfg, str(root), quick), {"workshop": name, "quick": quick})
                      for kind, name, cfg in jobs], desc="workshop prepare", progress=progress)
    seconds |= {name: t for (_, name, _), t in zip(jobs, took)}
    write_json(root / "built.json", {"quick": quick, "key": cache_key(quick), "seconds": seconds})


def cached_build(*, quick: bool, progress: bool = True) -> Path:
    """The workshop's runs, trained once into the govlab cache (processes share the build)."""
    path = cache_dir("workshop") / cache_key(quick)

    def make():
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            build(tmp, quick=quick, progress=progress)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    build_once(path, (path / "built.json").is_file, make)
    return path


def lesson_sources() -> Path:
    if not (LESSON_SOURCES / f"{LESSONS[0]}.ipynb").is_file():
        raise GovlabError(f"{LESSON_SOURCES}: the workshop lessons are not there (they ship in the "
                          "repository's notebooks/workshop; install govlab from a checkout)")
    return LESSON_SOURCES


def run_lesson(workshop: str | Path, name: str, out: str | Path, *, folder: str = "lessons",
               timeout_s: int = 600) -> float:
    """Execute notebook ``name`` of a prepared folder's ``lessons`` (or ``solutions``) with papermill
    and the python3 kernel into ``out``; returns its seconds."""
    import papermill as pm

    workshop = Path(workshop).resolve()
    start = time.perf_counter()
    pm.execute_notebook(str(workshop / folder / f"{name}.ipynb"), str(out), kernel_name="python3",
                        parameters={"WORKSHOP": str(workshop)}, progress_bar=False,
                        cwd=str(workshop / folder), execution_timeout=timeout_s)
    return round(time.perf_counter() - start, 1)


def prepare(out: str | Path, *, quick: bool = False, check: bool = True, progress: bool = True) -> dict:
    """Prepare ``out`` for the workshop (see the module docstring); returns ``seconds`` (the
    whole command), ``build_seconds`` and, with ``check``, ``lesson_seconds`` per lesson."""
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GovlabError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise GovlabError(f"{out}: a folder that is not a prepared workshop and not empty; give a new or empty folder")
    sources = lesson_sources()
    built = cached_build(quick=quick, progress=progress)
    build_seconds = round(time.perf_counter() - start, 1)
    (out / MANIFEST).unlink(missing_ok=True)  # prepared again: not prepared until written anew
    for part in ("runs", "lineage", "answers"):
        shutil.rmtree(out / part, ignore_errors=True)
        shutil.copytree(built / part, out / part)
    for part, src in (("lessons", sources), ("solutions", sources / "solutions")):
        shutil.rmtree(out / part, ignore_errors=True)
        (out / part).mkdir(parents=True)
        for nb in sorted(src.glob("*.ipynb")):
            shutil.copyfile(nb, out / part / nb.name)
    lesson_seconds = {}
    if check:  # the lessons open the folder by its manifest: a provisional one, removed if a lesson fails
        write_json(out / MANIFEST, {"workshop": str(out), "quick": quick, "lessons": list(LESSONS), "checking": True})
        checks = out / ".checks"
        checks.mkdir(exist_ok=True)
        try:
            for name in tqdm(LESSONS, desc="lessons", disable=not progress):
                lesson_seconds[name] = run_lesson(out, name, checks / f"{name}.ipynb")
        except BaseException:
            (out / MANIFEST).unlink(missing_ok=True)
            raise
        shutil.rmtree(out / "work", ignore_errors=True)  # what the lessons wrote: a class starts clean
    result = {"workshop": str(out), "quick": quick, "lessons": list(LESSONS), "cache": str(built),
              "build_seconds": build_seconds,
              "trained_seconds": json.loads((built / "built.json").read_text()).get("seconds")}
    if check:
        result["lesson_seconds"] = lesson_seconds
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / MANIFEST, result)  # last
    return result


def open_workshop(path: str | Path | None = None) -> Path:
    """A prepared folder: ``path``, else ``$GOVLAB_WORKSHOP``, else the parent of the working
    directory (the lessons run in ``DIR/lessons``)."""
    if path is None:
        path = os.environ.get("GOVLAB_WORKSHOP") or Path.cwd().parent
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise GovlabError(f"{path}: not a prepared workshop folder (no {MANIFEST}); run "
                          f"`govlab workshop prepare {path}` first")
    return path.resolve()


def read_manifest(path: str | Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())
