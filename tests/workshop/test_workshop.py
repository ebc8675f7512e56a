"""Workshop mode: every lesson executes on a quick-prepared folder; the prepared folder's layout;
the command's bad input (a folder not prepared, a busy port)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from govlab.workshop import LESSONS, run_lesson

GOVLAB = str(Path(sys.executable).parent / "govlab")


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_executes_in_quick_mode(workshop, name, artifacts):
    out = artifacts / f"executed_workshop_{name}.ipynb"
    seconds = run_lesson(workshop, name, out)
    assert seconds < 300
    book = nbformat.read(out, as_version=4)
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # the panel cell displayed a widget (its view is what a participant interacts with)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), name


def test_prepared_folder_keeps_answers_apart(workshop):
    manifest = json.loads((workshop / "workshop.json").read_text())
    assert manifest["quick"] is True and manifest["lessons"] == list(LESSONS)
    assert sorted(p.stem for p in (workshop / "lessons").glob("*.ipynb")) == list(LESSONS)
    assert len(list((workshop / "solutions").glob("*.ipynb"))) == len(LESSONS)
    answers = json.loads((workshop / "answers" / "lineage.json").read_text())
    assert set(answers) == {"suspect_1", "suspect_2", "suspect_3"}
    assert sorted(map(str, answers.values())) == ["None", "base_a", "base_c"]  # two fine-tunes, one NULL
    assert not list((workshop / "lessons").rglob("lineage.json"))

    from govlab.workshop import lessons

    assert lessons.check_verdict(workshop, "suspect_2", "NULL")
    assert not lessons.check_verdict(workshop, "suspect_2", "base_a")
    steps = lessons.checkpoint_steps(workshop)
    assert len(steps) >= 3  # the memorizing run kept weights at several steps


def test_prepare_json_reports_seconds(workshop, tmp_path):
    """A second prepare reuses the cached build: the command prints seconds and the lessons' paths."""
    r = subprocess.run([GOVLAB, "workshop", "prepare", str(tmp_path / "ws"), "--quick", "--no-check", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["seconds"] >= out["build_seconds"] >= 0 and out["quick"] is True
    assert (tmp_path / "ws" / "workshop.json").is_file()


def test_unprepared_folder_says_how(tmp_path):
    r = subprocess.run([GOVLAB, "workshop", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"govlab workshop prepare {tmp_path}" in lines[0], r.stderr
    r = subprocess.run([GOVLAB, "workshop", "prepare", str(Path(__file__))], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "not a folder" in r.stderr


def test_busy_port_is_one_clear_error(workshop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([GOVLAB, "workshop", str(workshop), "--port", str(port)], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"govlab: error: port {port} on 127.0.0.1 is in use (Address already in use); " \
                               "choose another with --port", r.stderr
    assert "http://" not in r.stdout  # refused before printing an address


@pytest.mark.slow  # 33-205 s each on the shared 2-core machine; the lessons above run the same functions
@pytest.mark.parametrize("name", LESSONS)
def test_solution_executes_in_quick_mode(workshop, name, artifacts):
    out = artifacts / f"executed_workshop_{name}_solutions.ipynb"
    run_lesson(workshop, f"{name}_solutions", out, folder="solutions")
    book = nbformat.read(out, as_version=4)
    last = [c for c in book.cells if c.cell_type == "code"][-1]
    assert last.outputs and not [o for o in last.outputs if o.get("output_type") == "error"]
