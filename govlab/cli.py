"""The ``govlab`` command."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Optional

import typer

from govlab.errors import GovlabError
from govlab.presets import names as presets

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Training governance for text-to-image diffusion models.")
JSON = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")


def strict(obj):
    """``obj`` with every non-finite float (an undefined figure: NaN, or an infinity) as None, so that
    ``--json`` prints strict JSON (null), which every JSON parser reads."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(strict(result), allow_nan=False))
    else:
        print(human)


def run_dir(path: Path) -> Path:
    if not (path / "config.yaml").is_file():
        raise GovlabError(f"{path}: not a govlab run directory (no config.yaml)")
    return path


@app.command()
def train(preset: Optional[str] = typer.Option(None, help=f"Preset name ({', '.join(presets())})."),
          config: Optional[Path] = typer.Option(None, help="YAML config; overrides the preset."),
          data: Optional[Path] = typer.Option(None, help="Dataset folder (images + metadata.jsonl)."),
          out: Optional[Path] = typer.Option(None, help="Run directory (default runs/NAME)."),
          resume: bool = typer.Option(False, help="Continue from the run's checkpoint."),
          device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N; overrides the config."),
          as_json: bool = JSON):
    """Train a model on the embedded world (or --data) and write the run directory."""
    from govlab.config import from_dict, load_config
    from govlab.run import train_run

    cfg = load_config(preset if preset or config else "demo", config)
    if data is not None:
        cfg = from_dict({"data": str(data.resolve())}, base=cfg)
    if device is not None:
        cfg = from_dict({"train": {"device": device}}, base=cfg, where="--device")
    out = out or Path("runs") / cfg.name
    result = train_run(cfg, out, resume=resume, progress=not as_json)
    if "rank" in result:  # a rank other than 0 under torchrun: rank 0 reports
        return
    if result["scored_against"] == "world":
        scored = (f"style_acc={result['style_acc']} shape_acc={result['shape_acc']} "
                  f"(chance {result['chance_style']} / {result['chance_shape']})")
    else:
        scored = (f"scored on its own data: nearest_source_acc={result.get('nearest_source_acc')} "
                  f"(chance {result.get('chance_nearest_source')}), loss {result.get('loss_first')} -> "
                  f"{result.get('loss_last')}")
    governed = cfg.routing.mode != "off" or cfg.provenance.enabled or cfg.memorization.mode != "off"
    explore = f"\nopen it in the explorer: govlab explore {result['run']}" if governed else ""
    emit(result, as_json, f"run directory: {result['run']}\nreport: {result['report']}\n{scored}{explore}")


@app.command()
def sample(run: Path, prompt: str = typer.Option(..., help="Caption to generate from."),
           n: int = typer.Option(8, "-n", help="Number of images."),
           seed: int = typer.Option(0, help="Sampling seed."),
           steps: int = typer.Option(20, help="Sampler steps."),
           guidance: float = typer.Option(3.0, help="Classifier-free guidance scale."),
           out: Path = typer.Option(Path("sample.png"), help="PNG grid to write."),
           cert: Optional[Path] = typer.Option(None, help="PEM certificate chain to sign the C2PA manifest with "
                                               "(default: the run's self-signed key)."),
           key: Optional[Path] = typer.Option(None, help="PEM private key of --cert."),
           as_json: bool = JSON):
    """Generate images for a prompt from a trained run (a PNG with a signed C2PA manifest)."""
    from govlab.compliance.credentials import (generation_assertion, load_signing_key, run_signing_key,
                                               write_signed_png)
    from govlab.models.diffusion import TextToImage
    from govlab.report import image_grid

    for name, value in (("-n", n), ("--steps", steps)):
        if value < 1:
            raise GovlabError(f"{name} must be >= 1, got {value}")
    if (cert is None) != (key is None):
        raise GovlabError("--cert and --key go together (a certificate chain and its private key)")
    signing = load_signing_key(cert, key) if cert is not None else None  # a mismatch: refused before sampling
    model = TextToImage.load(run_dir(run) / "model.safetensors")
    generation = generation_assertion(run, prompts=[prompt], n=n, seed=seed, steps=steps, guidance=guidance)
    signing = signing or run_signing_key(generation["model_sha256"])
    images = model.generate([prompt] * n, seed=seed, steps=steps, guidance=guidance)
    write_signed_png(image_grid(images, ncol=min(n, 8)), out, generation, signing)
    emit({"out": str(out), "n": n, "prompt": prompt, "seed": seed, "c2pa_signer": signing.where,
          "self_signed": signing.self_signed}, as_json, f"wrote {out} (C2PA manifest signed with {signing.where})")


@app.command()
def world(out: Path, preset: str = typer.Option("demo", help="Preset whose world to write."),
          as_json: bool = JSON):
    """Write the embedded world of a preset as an imagefolder (images + metadata.jsonl)."""
    from govlab.config import load_config
    from govlab.data.world import generate_world

    cfg = load_config(preset)
    generate_world(cfg.world, out, progress=not as_json)
    n = sum(1 for _ in open(out / "metadata.jsonl"))
    emit({"out": str(out), "records": n}, as_json, f"wrote {n} records to {out}")


@app.command()
def tag(folder: Path,
        taxonomy: Optional[Path] = typer.Option(None, help="Taxonomy YAML (default: the embedded world's)."),
        encoder: Optional[Path] = typer.Option(None, help="Local CLIPModel/CLIPVisionModel folder (default: "
                                               "the world's own encoder)."),
        out: Optional[Path] = typer.Option(None, help="Tagged copy to write (default FOLDER-tagged)."),
        source_from: str = typer.Option("auto", help="Source field: auto (url, then EXIF), url, exif, "
                                        "folder:N, field:NAME or none."),
        as_json: bool = JSON):
    """Fill in categories, source_id, license and opt_out of an imagefolder into a tagged copy, with a review file."""
    from govlab.tagging import tag_folder

    r = tag_folder(folder, out, taxonomy=taxonomy, encoder=encoder, source_from=source_from, progress=not as_json)
    emit(r, as_json, f"tagged copy: {r['out']}\nreview (lowest confidence first): {Path(r['out']) / 'review.jsonl'}\n"
         f"sources: {r['sources']}\nsource evidence: {r['source_evidence']}\n"
         f"category evidence: {r['category_evidence']}\nrows below 0.8 confidence: {r['low_confidence_rows']}")


@app.command()
def attenuate(run: Path, source: str = typer.Option(..., help="Source whose slot to scale."),
              factor: float = typer.Option(..., help="Scale of the slot's output; 0 removes it."),
              out: Path = typer.Option(..., help="New run directory to write."),
              as_json: bool = JSON):
    """Scale one source's routing slot and write a new run with a report of the effect."""
    from govlab.studies.attenuate import attenuate_run

    result = attenuate_run(run_dir(run), source, factor, out, progress=not as_json)
    b, a = result["before"], result["after"]
    m, chance = ("style_acc", "chance_style") if "style_acc_source" in a else ("nearest_source_acc",
                                                                              "chance_nearest_source")
    emit(result, as_json, f"run directory: {result['run']}\nreport: {Path(result['run']) / 'report.md'}\n"
         f"{source} {m} {b[f'{m}_source']} -> {a[f'{m}_source']}; "
         f"others {b[f'{m}_others']} -> {a[f'{m}_others']} (chance {a[chance]})")


@app.command()
def query(run: Path, source: Optional[str] = typer.Option(None, help="Which bands this source influenced."),
          band: Optional[str] = typer.Option(None, help="Which sources influenced this band."),
          as_json: bool = JSON):
    """Ask a run's provenance index which source changed which band, by how much and when."""
    from govlab.provenance.index import ProvenanceIndex

    index = ProvenanceIndex.open(run_dir(run))
    if source and band:
        r = index.cell(source, band)
        human = "\n".join(f"checkpoint {c}: grad_norm_sq {g:.6g} update_share {u:.6g}"
                          for c, g, u in zip(r["checkpoints"], r["grad_norm_sq"], r["update_share"]))
    elif source:
        r = index.bands_of(source)
        human = "\n".join(f"{b:24s} grad_norm_sq {v['grad_norm_sq']:.6g} update_share {v['update_share']:.6g} "
                          f"share over time {v['share_over_time']}" for b, v in r["bands"].items())
    elif band:
        r = index.sources_of(band)
        human = "\n".join(f"{s['source']:16s} share {s['share']:.4f} grad_norm_sq {s['grad_norm_sq']:.6g}"
                          for s in r["sources"])
    else:
        r = index.summary()
        human = "\n".join(f"{s:16s} " + " ".join(f"{b}={v:.3g}" for b, v in row.items())
                          for s, row in r["grad_norm_sq"].items())
    emit(r, as_json, human)


@app.command()
def attribute(run: Path, prompt: str = typer.Option(..., help="Prompt whose generations to attribute."),
              method: str = typer.Option("structural", help="Attribution method (structural, tracin, dtrak)."),
              n: int = typer.Option(4, "-n", help="Generations of the prompt (the images attributed)."),
              steps: int = typer.Option(8, help="Sampler steps."),
              seed: int = typer.Option(0, help="Sampling seed."),
              as_json: bool = JSON):
    """Rank the sources behind a prompt's generations."""
    import govlab.attribution.api  # noqa: F401  (registers tracin, dtrak)
    from govlab.attribution.structural import attribute as run_attribution

    for name, value in (("-n", n), ("--steps", steps)):
        if value < 1:
            raise GovlabError(f"{name} must be >= 1, got {value}")
    r = run_attribution(run_dir(run), prompt, method=method, n=n, steps=steps, seed=seed)
    emit(r, as_json, "\n".join(f"{s['source']:16s} {s['score']:.6f}" for s in r["sources"])
         + f"\n({method}, {r['time_s']} s)")


@app.command()
def attest(run: Path, format: str = typer.Option("md", "--format", help="md or json (attestation.md and "
                                                 ".json), eu-summary (eu-summary.md and .json: the EU AI Office's "
                                                 "template) or croissant (croissant.json)."),
           as_json: bool = JSON):
    """Write the run's training-content attestation in a format (into the run; re-sealed)."""
    from govlab.provenance.attest import attest as run_attest

    r = run_attest(run_dir(run), format=format, progress=not as_json)
    if format == "eu-summary":
        human = (Path(run) / "eu-summary.md").read_text()
        r = {k: r[k] for k in ("run", "sections_filled", "sections_for_a_person", "fields_filled",
                               "fields_for_a_person", "statements")} | {"files": ["eu-summary.json", "eu-summary.md"]}
    elif format == "croissant":
        human = "\n".join([f"wrote {run / f}" for f in r["files"]] + [f"note: {t}" for t in r["statements"]])
    else:
        human = (Path(run) / "attestation.md").read_text()
    emit(r, as_json or format == "json", human)


@app.command("verify-image")
def verify_image(image: Path, run: Optional[Path] = typer.Option(None, help="Run directory the image should "
                                                                 "come from (model and config checked)."),
                 as_json: bool = JSON):
    """Read a generated image's C2PA manifest back and check it (and, with --run, against the run); exits 1
    naming each problem."""
    from govlab.compliance.credentials import verify_image as check

    r = check(image, run_dir(run) if run is not None else None)
    emit(r, as_json, "\n".join(r["problems"] + [f"note: {t}" for t in r["notes"]])
         if r["problems"] else "\n".join([f"{image}: C2PA manifest valid, trainedAlgorithmicMedia"
                                          + (f", generated by the model of {run}" if run else "")]
                                         + [f"note: {t}" for t in r["notes"]]))
    if r["problems"]:
        raise typer.Exit(1)


@app.command()
def verify(run: Path, as_json: bool = JSON):
    """Check every artifact of a run against its manifest.json; exits 1 naming what changed."""
    from govlab.provenance.manifest import verify as run_verify

    problems = run_verify(run_dir(run))
    emit({"run": str(run), "ok": not problems, "problems": problems}, as_json,
         "\n".join(problems) if problems else f"{run}: every artifact matches manifest.json")
    if problems:
        raise typer.Exit(1)


@app.command("audit-memorization")
def audit_memorization(run: Path, n: int = typer.Option(4, "-n", help="Generations per caption."),
                       sample: Optional[int] = typer.Option(None, help="Audit this many random captions "
                                                            "(default: every training caption)."),
                       steps: Optional[int] = typer.Option(None, help="Sampler steps (default: the run's eval steps)."),
                       seed: int = typer.Option(0, help="Sampling seed."),
                       as_json: bool = JSON):
    """Count training images a run reproduces from their captions (ratio criterion, pixel and feature space)."""
    from govlab.studies.audit import audit_run

    r = audit_run(run_dir(run), sample=sample, n=n, steps=steps, seed=seed, progress=not as_json)
    summary = {k: v for k, v in r.items() if k != "items"}
    emit(summary, as_json, "\n".join(
        [f"{it['file']}  pixel ratio {it['pixel_ratio']}  feature ratio {it.get('feature_ratio')}  {it['caption']}"
         for it in r["reproduced"]]
        + [f"extraction rate: pixel {r['extraction_rate']}, feature {r.get('extraction_rate_feature')} "
           f"({r['captions']} captions x {n}); planted: pixel {r.get('extraction_rate_planted')}, "
           f"feature {r.get('extraction_rate_planted_feature')}", f"grid: {r['grid']}",
           f"extracted beside their training images: {r.get('extracted_grid')}", f"json: {r['json']}"]))


zoo_app = typer.Typer(no_args_is_help=True, help="A model zoo with known lineage.")
app.add_typer(zoo_app, name="zoo")

from govlab.workshop.cli import app as workshop_app  # noqa: E402

app.add_typer(workshop_app, name="workshop")


@zoo_app.command("build")
def zoo_build(out: Path, quick: bool = typer.Option(False, help="Smoke-sized models (minutes on a CPU)."),
              workers: Optional[int] = typer.Option(None, help="Local Ray CPUs to train on; 1: serial in this "
                                                    "process; default: $GOVLAB_WORKERS or every core."),
              address: Optional[str] = typer.Option(None, help="Ray cluster to train on (host:port or "
                                                    "ray://host:port); OUT must be on a file system it shares."),
              as_json: bool = JSON):
    """Train the lineage zoo into OUT: bases in OUT/pool, fine-tunes and outsiders in OUT/targets."""
    from govlab.lineage.zoo import build_zoo
    from govlab.sweep import Sweep

    sweep = Sweep(workers=workers, address=address).connect()  # an unreachable cluster: before OUT is made
    zoo = build_zoo(out, quick=quick, progress=not as_json, sweep=sweep)
    models = [{"name": m.name, "role": m.role, "expected": m.expected, "path": str(out / m.path),
               "note": m.note} for m in zoo.models]
    emit({"zoo": str(out), "pool": str(zoo.pool_dir), "quick": quick, "models": models}, as_json,
         "\n".join(f"{m['role']:9s} {m['name']:12s} expected {m['expected'] or 'NULL':8s} {m['note']}"
                   for m in models) + f"\npool: {zoo.pool_dir}")


@app.command()
def lineage(target: Path = typer.Option(..., help="Run directory or .safetensors model to test."),
            pool: Path = typer.Option(..., help="Directory of base models (run dirs or .safetensors)."),
            prompt_file: Optional[Path] = typer.Option(None, help="Test prompts, one per line "
                                                       "(default: the selection step's detailed prompts)."),
            k: int = typer.Option(100, help="Images per prompt and model (the paper's k = 100)."),
            method: str = typer.Option("gaussian", help="JS estimator: gaussian or knn."),
            extractor: str = typer.Option("world", help="Features: world, multiscale or pixels."),
            tau: float = typer.Option(-1.64, help="z-test parameter of the NULL threshold."),
            seed: int = typer.Option(0, help="Sampling seed."),
            as_json: bool = JSON):
    """Was TARGET fine-tuned from a base model of POOL, or trained from scratch (NULL)?"""
    from govlab.io import read_text
    from govlab.lineage.api import correlated_pairs, lineage_from_features, sample_features
    from govlab.lineage.distance import METHODS

    if method not in METHODS:
        raise GovlabError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    prompts = None
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise GovlabError(f"{prompt_file}: prompt file not found")
        prompts = [ln.strip() for ln in read_text(prompt_file).splitlines()
                   if ln.strip() and not ln.lstrip().startswith("#")]
        if not prompts:
            raise GovlabError(f"{prompt_file}: no prompts (one per line)")
    feats, bases, name = sample_features(target, pool, prompts, k=k, extractor=extractor, seed=seed)
    result = lineage_from_features(feats, bases, name, method=method, tau=tau)
    distances = {b: sum(v.distances[b] for v in result.votes) / len(result.votes) for b in bases}
    threshold = sum(v.threshold for v in result.votes) / len(result.votes)
    out = {"target": str(target), "pool": str(pool), "k": k, "extractor": extractor, **result.to_dict(),
           "distances": distances, "threshold": threshold,
           "correlated_bases": correlated_pairs(feats, bases, method=method, tau=tau)}
    votes = [v.vote or "NULL" for v in result.votes]
    verdict = (f"fine-tuned from {result.base}" if result.base
               else "NULL (trained from scratch, or its base is not in the pool)")
    rows = "\n".join(f"  {b:16s} {d:8.3f}{'  <- closest' if b == min(distances, key=distances.get) else ''}"
                      for b, d in distances.items())
    emit(out, as_json, f"{target}: {verdict}\nvotes per prompt: {', '.join(votes)}\n"
         f"mean distance to each base ({method} JS):\n{rows}\nmean NULL threshold: {threshold:.3f}")


@app.command()
def explore(runs: list[Path] = typer.Argument(..., help="Run directories (e.g. a routed and an unrouted run)."),
            port: int = typer.Option(5006, help="Port to serve on (loopback only)."),
            show: bool = typer.Option(False, help="Open a browser tab.")):
    """Serve the Panel explorer for RUNS at http://127.0.0.1:PORT/explorer."""
    from govlab.explore.serve import check_runs, serve

    check_runs(runs)
    print(f"govlab explorer: http://127.0.0.1:{port}/explorer (Ctrl-C stops it)", flush=True)
    serve(runs, port=port, show=show)


@app.command()
def bench(name: str, quick: bool = typer.Option(False, help="Small sizes for a quick check."),
          full: bool = typer.Option(False, "--full", help="Full sizes (the default without --quick)."),
          device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (train, routing, index, "
                                                          "memorization; default: the preset's)."),
          preset: Optional[str] = typer.Option(None, help="Train on this preset instead of the benchmark's own "
                                               "(train, routing, index, memorization)."),
          workers: Optional[int] = typer.Option(None, help="Local Ray CPUs for the sweep of retrainings (sweep, "
                                                "attribution, lineage); 1: serial in this process; default: "
                                                "$GOVLAB_WORKERS or every core (sweep: 2)."),
          address: Optional[str] = typer.Option(None, help="Ray cluster (host:port or ray://host:port) to run the "
                                                "sweep on (sweep, attribution, lineage)."),
          as_json: bool = JSON):
    """Run a benchmark and print its figures."""
    from govlab.bench import BENCHMARKS, DEVICE_BENCHMARKS, SWEEP_BENCHMARKS

    if name not in BENCHMARKS:
        raise GovlabError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    if quick and full:
        raise GovlabError("--quick and --full: choose one")
    if (device is not None or preset is not None) and name not in DEVICE_BENCHMARKS:
        raise GovlabError(f"--device and --preset apply to {', '.join(DEVICE_BENCHMARKS)}, not {name!r}")
    if (workers is not None or address is not None) and name not in SWEEP_BENCHMARKS:
        raise GovlabError(f"--workers and --address apply to {', '.join(SWEEP_BENCHMARKS)}, not {name!r}")
    options = {}
    if name in SWEEP_BENCHMARKS:  # a bad count or an unreachable cluster: one line, before anything runs
        from govlab.sweep import Sweep

        Sweep(workers=workers, address=address)
        if address is not None:
            from govlab.sweep import check_address

            check_address(address)
        options = {"workers": workers, "address": address}
    if name in DEVICE_BENCHMARKS:  # a bad device or preset: one line, before anything runs
        from govlab.config import from_dict, load_config
        from govlab.train import training_device

        if device is not None:
            from_dict({"train": {"device": device}}, where="--device")
        if device is not None or preset is not None:
            training_device(device or load_config(preset).train.device)
        options = {"device": device, "preset": preset}
    result = BENCHMARKS[name](quick=quick, **options)
    emit(result, as_json, json.dumps(result, indent=2))


def main() -> None:
    try:
        app()
    except GovlabError as e:
        print(f"govlab: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
