"""Serve the explorer on a free loopback port and drive Debian's /usr/bin/chromium (no `playwright install`)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args, tmp_path_factory):
    """pytest-playwright's launch args: Debian chromium, with its profile files kept out of $HOME."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} missing: `make test` installs it (apt-get install chromium)")
    home = tmp_path_factory.mktemp("chrome-home")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": ARGS,
            "env": {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "XDG_CACHE_HOME": str(home / ".cache")}}


@pytest.fixture(scope="session")
def explore_runs(tmp_path_factory):
    """A routed run (tiny model, events, lineage), an unrouted one and a per-sample index (1.6M cells)."""
    import torch

    from govlab.explore.synthetic import fixture_run

    root = tmp_path_factory.mktemp("explore")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = (fixture_run(root / "routed", model=True), fixture_run(root / "unrouted", routed=False, seed=1),
                fixture_run(root / "persample", samples=200_000))
    finally:
        torch.set_num_threads(threads)
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_live(port: int, proc: subprocess.Popen, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/liveness", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"port {port} not live after {deadline_s} s")


def start(cmd: list[str], port: int, log: Path):
    """Start a server process in its own session; returns (proc, stop) with stop bounded to 20 s."""
    out = open(log, "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def stop():
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        out.close()

    try:
        wait_live(port, proc)
    except BaseException:
        stop()
        print(log.read_text())
        raise
    return proc, stop


@pytest.fixture
def launch(tmp_path):
    """``launch(cmd, port)`` starts a server (stopped after the test); returns its log path."""
    stops = []

    def _launch(cmd: list[str], port: int) -> Path:
        log = tmp_path / f"serve-{port}.log"
        stops.append(start(cmd, port, log)[1])
        return log

    yield _launch
    for stop in stops:
        stop()


@pytest.fixture
def no_app_traceback():
    return assert_no_app_traceback


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def explorer(explore_runs, tmp_path_factory):
    """`govlab explore ROUTED UNROUTED PERSAMPLE --port P`; yields the page URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "explore.log"
    _, stop = start([str(Path(sys.executable).parent / "govlab"), "explore", *map(str, explore_runs),
                     "--port", str(port)], port, log)
    yield f"http://127.0.0.1:{port}/explorer"
    stop()
    assert_no_app_traceback(log)


def assert_no_app_traceback(log: Path) -> None:
    """No traceback through govlab or the app in a server log (tornado's WebSocketClosedError when
    the browser goes away while the server writes is not one)."""
    text = log.read_text()
    ours = [ln for ln in text.splitlines() if f'File "{ROOT}/govlab' in ln or f'File "{ROOT}/apps' in ln]
    assert not ours, text


# The demo preset (routing with slots, the index, the monitor) at a test's size: fewer, smaller steps,
# checkpoints and monitor checks every 10 steps.
DEMO_SMALL = {"name": "demo", "train": {"steps": 30, "batch_size": 16, "checkpoint_every": 10, "warmup_steps": 5},
              "memorization": {"every": 10, "start": 10, "watch_size": 32}}


@pytest.fixture(scope="session")
def governed_demo(tmp_path_factory):
    """A run of the demo preset as `make demo` trains it (its governance hooks), at DEMO_SMALL's size."""
    import torch

    from govlab.config import from_dict, load_config
    from govlab.data.cache import run_dataset
    from govlab.memorization.monitor import attach as attach_monitor
    from govlab.provenance.hook import attach as attach_provenance
    from govlab.routing import attach
    from govlab.train import Trainer

    cfg = from_dict(DEMO_SMALL, base=load_config("demo"))
    dataset = run_dataset(cfg, progress=False)
    data, routing = attach(cfg, dataset)
    data, index = attach_provenance(cfg, data, dataset.sources)
    out = tmp_path_factory.mktemp("governed") / "demo"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, data, out, hooks=[*routing, *attach_monitor(cfg, data), *index], progress=False).fit()
    finally:
        torch.set_num_threads(threads)
    return out
