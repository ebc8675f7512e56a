"""A workshop lesson in JupyterLab in headless Chromium: run the lesson, change a widget, the
output it drives changes (``govlab workshop DIR --port P``, the Debian chromium)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.browser
GOVLAB = str(Path(sys.executable).parent / "govlab")
# JupyterLab's own kernel connection, not the lesson: when the page's connection to the running
# kernel is replaced (a reconnect on a loaded machine, the kernel dialog), the requests still in
# flight are rejected with this message and nothing catches it (seen in CI for the subshell
# request JupyterLab sends on connecting). The lesson's own errors still fail the test.
KERNEL_RECONNECT = re.compile(r"^(Error: )?Canceled future for \w+ message before replies were done$")
TOKEN = "workshop-test-token"
# the notebook's page has joined its kernel: session ready, websocket connected, kernel idle
JOINED = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const c = w && w.sessionContext; const k = c && c.session && c.session.kernel;
  return !!(k && c.isReady && k.connectionStatus === 'connected' && k.status === 'idle') && k.id; }"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory, free_port_module):
    """`govlab workshop DIR --port P --token T` on a quick-prepared folder; yields (base URL, log)."""
    from govlab.workshop import prepare

    root = tmp_path_factory.mktemp("workshop-lab")
    prepare(root / "ws", quick=True, check=False, progress=False)
    home = root / "home"  # JupyterLab's settings and workspaces, kept out of $HOME
    # the test reads the page's own kernel connection (window.jupyterapp) to know when the page has
    # joined the kernel: JupyterLab's toolbar reads idle before it has (seen in CI)
    (home / "config").mkdir(parents=True)
    (home / "config" / "jupyter_lab_config.json").write_text(json.dumps({"LabApp": {"expose_app_in_browser": True}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings")}
    port, log = free_port_module, root / "lab.log"
    out = open(log, "w")
    proc = subprocess.Popen([GOVLAB, "workshop", str(root / "ws"), "--port", str(port), "--token", TOKEN], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < end, f"JupyterLab not up after 90 s\n{log.read_text()}"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        out.close()


@pytest.fixture(scope="module")
def free_port_module():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(path) -> str:
    return hashlib.sha1(Image.open(path).convert("RGB").tobytes()).hexdigest()


def api(base: str, path: str, body: dict | None = None, timeout: float = 300) -> dict | list:
    """One call to the Jupyter server's REST API with the test's token."""
    req = urllib.request.Request(f"{base}/api/{path}", method="POST" if body is not None else "GET",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def start_kernel(base: str, notebook: str, deadline_s: float = 300) -> str:
    """The notebook's session, started on the server before the page opens (JupyterLab then joins it
    rather than starting its own: on a loaded machine the page's own start can fail and leave it in
    its kernel dialog, seen in CI); returns the kernel's id. The server answers once the kernel's
    process runs; its state reads "starting" until a client talks to it, so the page's indicator
    says when it is idle."""
    session = api(base, "sessions", {"path": notebook, "name": notebook, "type": "notebook",
                                      "kernel": {"name": "python3"}}, timeout=deadline_s)
    kernel = session["kernel"]["id"]
    assert api(base, f"kernels/{kernel}")["execution_state"] != "dead", f"the kernel of {notebook} died"
    return kernel


def test_lesson_widget_drives_its_output(page, lab, artifacts):
    base, log = lab
    text = log.read_text()
    assert "http://127.0.0.1:" in text and f"token={TOKEN}" in text  # the URL the command prints
    start_kernel(base, "01_routing.ipynb")
    errors = []
    page.on("pageerror", lambda e: None if KERNEL_RECONNECT.match(str(e)) else errors.append(f"pageerror: {e}"))
    page.set_default_timeout(120_000)
    page.set_viewport_size({"width": 1280, "height": 1000})
    url = f"{base}/lab/tree/01_routing.ipynb?token={TOKEN}"
    started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]"))  # [*]: or [n]:
    select = page.locator(".widget-dropdown select").first
    dialog = page.locator(".jp-Dialog")

    def joined() -> str:
        """Waits until the page has joined the notebook's kernel; returns the kernel's id."""
        page.locator(".jp-Notebook").first.wait_for()
        return page.wait_for_function(JOINED, timeout=180_000).json_value()

    def run_all():
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    page.goto(url)
    kernel = joined()
    run_all()
    last_run, reloads = time.monotonic(), 0
    end = time.monotonic() + 420  # the kernel imports torch and draws the panel: minutes on a loaded machine
    while not select.is_visible():
        if dialog.count() and dialog.first.is_visible():
            # a dialog (the kernel's choice, shown when Run All finds no kernel): dismissed, never
            # accepted (accepting starts another kernel and the page loses its connection, seen in
            # CI); the page is loaded again, joins the session's kernel, and the cells run again
            page.screenshot(path=artifacts / f"workshop_lesson1_dialog{reloads}.png")
            page.keyboard.press("Escape")
            last_run = 0.0
        elif started.count() == 0 and time.monotonic() - last_run > 20:
            # no cell started 20 s after Run All: the page is loaded again and the cells run again
            assert reloads < 3, f"Run All started no cell after {reloads} reloads"
            reloads += 1
            page.goto(url)
            kernel = joined()
            run_all()
            last_run = time.monotonic()
        if time.monotonic() > end:
            page.screenshot(path=artifacts / "workshop_lesson1_timeout.png")
            session = [s for s in api(base, "sessions") if s["path"] == "01_routing.ipynb"]
            pytest.fail("the lesson's panel did not appear in 420 s (test-artifacts/workshop_lesson1_timeout.png); "
                        f"page's kernel {kernel}, sessions {session}, reloads {reloads}; "
                        f"JupyterLab's log ends:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    page.screenshot(path=artifacts / "workshop_lesson1_run_all.png")
    grid = page.locator(".widget-image").first
    page.wait_for_function("e => e.src && e.complete && e.naturalWidth > 0", arg=grid.element_handle())
    page.get_by_text("Share judged in artist_0's style").first.wait_for()
    src = grid.get_attribute("src")
    panel = page.locator(".widget-vbox").first  # the lesson's panel: controls, text, grid, heatmaps
    grid.scroll_into_view_if_needed()
    before, after = artifacts / "workshop_lesson1_before.png", artifacts / "workshop_lesson1_after.png"
    grid.screenshot(path=before)
    panel.screenshot(path=artifacts / "workshop_lesson1_panel.png")
    page.screenshot(path=artifacts / "workshop_lesson1_page.png")

    select.select_option("artist_2")  # the artist widget: generations and heatmaps are redrawn
    page.get_by_text("Share judged in artist_2's style").first.wait_for()
    end = time.monotonic() + 60
    while grid.get_attribute("src") == src and time.monotonic() < end:
        time.sleep(0.3)
    assert grid.get_attribute("src") != src, "the generations did not change after choosing another artist"
    page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=grid.element_handle())
    grid.screenshot(path=after)
    assert digest(before) != digest(after), "the generation grid's pixels did not change"
    panel.screenshot(path=artifacts / "workshop_lesson1_panel_after.png")
    assert page.get_by_text("Traceback").count() == 0
    assert not errors, errors
