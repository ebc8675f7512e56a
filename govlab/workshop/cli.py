"""``govlab workshop prepare DIR`` and ``govlab workshop DIR`` (the ``serve`` subcommand by default)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup


class _ServeByDefault(TyperGroup):
    """``govlab workshop DIR [--port P]`` is ``govlab workshop serve DIR [--port P]``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["serve", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_ServeByDefault, no_args_is_help=True, add_completion=False,
                  help="Workshop lessons: `govlab workshop prepare DIR`, then `govlab workshop DIR`.")


@app.command()
def prepare(out: Path, quick: bool = typer.Option(False, help="Tiny models (a check of the mechanics, "
                                                  "under a minute once cached)."),
            check: bool = typer.Option(True, help="Execute each lesson once after preparing (lesson_seconds)."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line of stdout.")):
    """Train what the four lessons need (cached), copy the lessons into OUT and check they run."""
    from govlab.workshop.folder import prepare as run

    r = run(out, quick=quick, check=check, progress=not as_json)
    if as_json:
        print(json.dumps(r))
        return
    lessons = "".join(f"\n  {k}: {v} s" for k, v in r.get("lesson_seconds", {}).items())
    print(f"prepared {r['workshop']} in {r['seconds']} s (build {r['build_seconds']} s)"
          + (f"; each lesson executed once:{lessons}" if lessons else "")
          + f"\nstart it with: govlab workshop {r['workshop']}")


@app.command()
def serve(workshop: Path, port: int = typer.Option(8888, help="Port to serve on."),
          ip: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
          token: Optional[str] = typer.Option(None, help="Sign-in token (default: a fresh random one, printed in "
                                              "the URL; '' for none, on a loopback address only)."),
          show: bool = typer.Option(False, help="Open a browser tab.")):
    """Start JupyterLab on a prepared folder's lessons; prints the URL to open."""
    from govlab.workshop.server import serve as run

    run(workshop, port=port, ip=ip, token=token, show=show)
