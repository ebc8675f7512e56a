"""The ``govlab`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from govlab.errors import GovlabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Training governance for text-to-image diffusion models.")
JSON = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")


def emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print(human)


def run_dir(path: Path) -> Path:
    if not (path / "config.yaml").is_file():
        raise GovlabError(f"{path}: not a govlab run directory (no config.yaml)")
    return path


@app.command()
def train(preset: Optional[str] = typer.Option(None, help="Preset name (smoke, demo, gpu)."),
          config: Optional[Path] = typer.Option(None, help="YAML config; overrides the preset."),
          data: Optional[Path] = typer.Option(None, help="Dataset folder (images + metadata.jsonl)."),
          out: Optional[Path] = typer.Option(None, help="Run directory (default runs/NAME)."),
          resume: bool = typer.Option(False, help="Continue from the run's checkpoint."),
          as_json: bool = JSON):
    """Train a model on the embedded world (or --data) and write the run directory."""
    from govlab.config import from_dict, load_config
    from govlab.run import train_run

    cfg = load_config(preset if preset or config else "demo", config)
    if data is not None:
        cfg = from_dict({"data": str(data)}, base=cfg)
    out = out or Path("runs") / cfg.name
    result = train_run(cfg, out, resume=resume, progress=not as_json)
    emit(result, as_json, f"run directory: {result['run']}\nreport: {result['report']}\n"
         f"style_acc={result['style_acc']} shape_acc={result['shape_acc']} "
         f"(chance {result['chance_style']} / {result['chance_shape']})")


@app.command()
def sample(run: Path, prompt: str = typer.Option(..., help="Caption to generate from."),
           n: int = typer.Option(8, "-n", help="Number of images."),
           seed: int = typer.Option(0, help="Sampling seed."),
           steps: int = typer.Option(20, help="Sampler steps."),
           guidance: float = typer.Option(3.0, help="Classifier-free guidance scale."),
           out: Path = typer.Option(Path("sample.png"), help="PNG grid to write."),
           as_json: bool = JSON):
    """Generate images for a prompt from a trained run."""
    from govlab.models.diffusion import TextToImage
    from govlab.report import image_grid, save_png

    if n < 1:
        raise GovlabError(f"-n must be >= 1, got {n}")
    model = TextToImage.load(run_dir(run) / "model.safetensors")
    images = model.generate([prompt] * n, seed=seed, steps=steps, guidance=guidance)
    save_png(image_grid(images, ncol=min(n, 8)), out)
    emit({"out": str(out), "n": n, "prompt": prompt, "seed": seed}, as_json, f"wrote {out}")


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
def attenuate(run: Path, source: str = typer.Option(..., help="Source whose slot to scale."),
              factor: float = typer.Option(..., help="Scale of the slot's output; 0 removes it."),
              out: Path = typer.Option(..., help="New run directory to write."),
              as_json: bool = JSON):
    """Scale one source's routing slot and write a new run with a report of the effect."""
    from govlab.routing.attenuate import attenuate_run

    result = attenuate_run(run_dir(run), source, factor, out, progress=not as_json)
    b, a = result["before"], result["after"]
    emit(result, as_json, f"run directory: {result['run']}\nreport: {Path(result['run']) / 'report.md'}\n"
         f"{source} style_acc {b['style_acc_source']} -> {a['style_acc_source']}; "
         f"others {b['style_acc_others']} -> {a['style_acc_others']} (chance {a['chance_style']})")


@app.command()
def bench(name: str, quick: bool = typer.Option(False, help="Small sizes for a quick check."),
          as_json: bool = JSON):
    """Run a benchmark (train, routing) and print its figures."""
    from govlab.bench import BENCHMARKS

    if name not in BENCHMARKS:
        raise GovlabError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
    result = BENCHMARKS[name](quick=quick)
    emit(result, as_json, json.dumps(result, indent=2))


def main() -> None:
    try:
        app()
    except GovlabError as e:
        print(f"govlab: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
