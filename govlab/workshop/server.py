"""``govlab workshop DIR``: JupyterLab on a prepared folder's lessons."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import secrets
import socket
import sys
from pathlib import Path

from govlab.errors import GovlabError
from govlab.workshop.folder import open_workshop


def check_port(ip: str, port: int) -> None:
    """One clear error when ``ip:port`` cannot be bound (another server holds it)."""
    if not 1 <= port <= 65535:
        raise GovlabError(f"--port must be in 1..65535, got {port}")
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        try:
            s.bind((ip, port))
        except OSError as e:
            raise GovlabError(f"port {port} on {ip} is in use ({e.strerror}); choose another with --port") from None


def command(workshop: Path, *, port: int, ip: str, token: str, show: bool) -> list[str]:
    """The JupyterLab command line: rooted at the lessons, on ``ip:port`` only (no fallback port)."""
    return [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={workshop / 'lessons'}",
            f"--ServerApp.ip={ip}", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", *([] if show else ["--no-browser"]),
            *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])]  # containers run as root


def url(ip: str, port: int, token: str) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/lab/tree/01_routing.ipynb" + (f"?token={token}" if token else "")


def serve(workshop: str | Path, *, port: int = 8888, ip: str = "127.0.0.1", token: str | None = None,
          show: bool = False) -> None:
    """Replace this process with JupyterLab on ``workshop/lessons`` (``GOVLAB_WORKSHOP`` set, so
    the lessons find their runs). ``token`` None: a fresh random one, printed in the URL; ``""``:
    none, allowed on a loopback address only."""
    workshop = open_workshop(workshop)
    if importlib.util.find_spec("jupyterlab") is None or importlib.util.find_spec("ipywidgets") is None:
        raise GovlabError("JupyterLab and ipywidgets are not installed in this environment: "
                          "pip install 'govlab[notebooks]'")
    try:
        loopback = ipaddress.ip_address(ip).is_loopback
    except ValueError:
        raise GovlabError(f"--ip must be an IP address, got {ip!r}") from None
    if token == "" and not loopback:
        raise GovlabError(f"an empty --token on {ip} would let anyone on the network run code; "
                          "keep a token, or serve on 127.0.0.1")
    check_port(ip, port)
    token = secrets.token_hex(16) if token is None else token
    print(f"govlab workshop: {url(ip, port, token)}", flush=True)
    print("open that address in a browser (the token signs you in); Ctrl-C stops the server", flush=True)
    env = {**os.environ, "GOVLAB_WORKSHOP": str(workshop)}
    cmd = command(workshop, port=port, ip=ip, token=token, show=show)
    os.execve(cmd[0], cmd, env)
