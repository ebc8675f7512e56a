"""Sweeps of cached, config-hashed jobs (retrainings, generations): on Ray, or serially in-process.

A sweep is a list of ``Job``s, each a module-level function and its arguments that computes one cache
entry (or loads it when it exists) and returns a small result (a run directory, a number). The
file-locked cache (``govlab.data.cache``) stays the source of truth: a job whose entry is ready is
not submitted, and a job that runs twice (two processes, or a retry) builds its entry once under the
entry's lock. ``Sweep`` runs the jobs

- serially in this process where Ray is not installed or ``workers`` is 1 (or at most one job is
  left to compute);
- on a local Ray instance started with ``workers`` CPUs (default: ``$GOVLAB_WORKERS``, else every
  core), one CPU per job; where the default instance (``workers`` not given) cannot start, serially
  with a warning;
- on an existing Ray cluster with ``address`` (``host:port`` or ``ray://host:port``); the cluster's
  nodes need govlab installed and ``$GOVLAB_CACHE`` on a shared file system (each job writes its
  entry there, under the path the driver names).

Every job runs with the same torch thread count (``threads``) whichever way it runs, so that a
sweep on Ray gives the bits a serial sweep gives (CPU kernels sum in an order that depends on the
thread count: about 1e-6 apart otherwise). A job that raises stops the sweep with a
``SweepJobError`` naming the job's config.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from govlab.errors import GovlabError
from govlab.io import sha256_json

CONNECT_TIMEOUT_S = 5.0
ENV_PASSED = ("GOVLAB_CACHE",)  # read by the jobs; handed to Ray workers with each job
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
RAY_OBJECT_STORE_BYTES = 128 * 1024 ** 2
# Ray gives its raylet 30 s to register; its agents' start alone can take longer on a loaded machine
# (the raylet then stops): the start is tried again, with the Python modules warm.
RAY_START_ATTEMPTS = 3


class SweepJobError(GovlabError):
    """A job of a sweep raised: ``config`` is the job's config, ``__cause__`` the original error."""

    def __init__(self, config: dict, cause: BaseException):
        self.config, self.cause = config, cause
        super().__init__(f"sweep job {json.dumps(config, sort_keys=True, default=str)} failed: "
                         f"{type(cause).__name__}: {cause}")


@dataclass(frozen=True)
class Job:
    """``fn(*args)`` computes (or loads) the cache entry that ``config`` describes.

    ``fn`` must be importable by name (a module-level function) to run on Ray; ``config`` is small
    and JSON-able (it names the job in progress and errors, and ``key`` hashes it); ``cached()``
    says in this process whether the entry is already there (then the job is not submitted, and
    ``fn`` runs here to load it)."""

    fn: Callable[..., Any]
    args: tuple = ()
    config: dict = field(default_factory=dict)
    cached: Callable[[], bool] | None = None

    @property
    def key(self) -> str:
        return sha256_json(self.config)[:16]


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def default_workers() -> int:
    env = os.environ.get("GOVLAB_WORKERS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise GovlabError(f"GOVLAB_WORKERS: expected an integer >= 1, got {env!r}") from None
        if n < 1:
            raise GovlabError(f"GOVLAB_WORKERS: expected an integer >= 1, got {env!r}")
        return n
    return os.cpu_count() or 1


def check_address(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an ``--address`` whose host and port do not answer within ``timeout`` seconds, before
    Ray tries (its own connection retries take minutes). ``auto`` (a cluster on this machine, found
    by Ray) is left to Ray."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"ray-gcs://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise GovlabError(f"--address {address!r}: expected host:port or ray://host:port")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise GovlabError(f"--address {address}: no Ray cluster answers there within {timeout:g} s "
                          f"({e.strerror or e})") from None


def _init_ray(*, workers: int | None, address: str | None) -> None:
    """Connect to ``address``, or start a small local Ray instance with ``workers`` CPUs (no
    dashboard); a process already connected stays on its instance."""
    import ray

    if address is not None:
        check_address(address)
    if ray.is_initialized():
        return
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if address is not None:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, TimeoutError, RuntimeError) as e:
            raise GovlabError(f"--address {address}: could not connect to a Ray cluster ({e})") from None
        return
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(num_cpus=workers or default_workers(), include_dashboard=False,
                     object_store_memory=RAY_OBJECT_STORE_BYTES, log_to_driver=False, configure_logging=False)
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception when its node times out at startup
            ray.shutdown()
            if "timed out during startup" not in str(e) or attempt == RAY_START_ATTEMPTS:
                raise GovlabError(f"a local Ray instance did not start ({e}); --workers 1 runs the sweep "
                                  "serially") from e


@contextmanager
def _job_env(env: dict[str, str | None], threads: int | None):
    """The job's environment and torch thread count, restored afterwards."""
    import torch

    before_env = {k: os.environ.get(k) for k in env}
    before_threads = torch.get_num_threads()
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        for k, v in before_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _call(fn, env, threads, *args):
    """What a Ray worker runs for one job (``args`` top-level, so that Ray resolves object refs)."""
    with _job_env(env, threads):
        return fn(*args)


_REMOTE = None


def _remote():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(num_cpus=1, max_retries=0)(_call)
    return _REMOTE


@dataclass(frozen=True)
class Sweep:
    """How to run sweeps: ``workers`` local Ray CPUs (None: ``$GOVLAB_WORKERS`` or every core; 1:
    serial in this process), or the Ray cluster at ``address``; ``threads`` torch threads per job."""

    workers: int | None = None
    address: str | None = None
    threads: int = 1

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise GovlabError(f"--workers must be >= 1, got {self.workers}")
        if self.threads < 1:
            raise GovlabError(f"threads must be >= 1, got {self.threads}")
        if self.address is not None and not ray_available():
            raise GovlabError(f"--address {self.address}: Ray is not installed (pip install ray)")

    @property
    def serial(self) -> bool:
        """Whether jobs run in this process (no Ray)."""
        if self.address is not None:
            return False
        return not ray_available() or (self.workers or default_workers()) == 1

    def connect(self) -> "Sweep":
        """Start or reach Ray now (a bad ``address`` fails here, before anything is computed)."""
        if not self.serial:
            _init_ray(workers=self.workers, address=self.address)
        return self

    def run(self, jobs: list[Job], *, desc: str = "sweep", progress: bool = True) -> list:
        """Each job's result, in order. Cached jobs are not submitted; the others run serially or on
        Ray (one CPU each); the progress bar counts finished jobs. The first job that raises stops
        the sweep (``SweepJobError`` with its config; jobs still running on Ray are cancelled)."""
        jobs = list(jobs)
        todo = [i for i, j in enumerate(jobs) if j.cached is None or not j.cached()]
        env = {k: os.environ.get(k) for k in ENV_PASSED}
        results: list = [None] * len(jobs)
        remote = [] if self.serial or (len(todo) <= 1 and self.address is None) else todo
        if remote and self.workers is None and self.address is None:
            try:  # the default local instance: where Ray cannot start, the sweep runs here
                self.connect()
            except GovlabError as e:
                warnings.warn(f"{e}: running the sweep serially")
                remote = []
        with tqdm(total=len(jobs), desc=desc, disable=not progress) as bar:
            if remote:
                self._run_ray(jobs, remote, env, results, bar)
            for i, job in enumerate(jobs):  # the rest in this process: cached entries load here
                if i in remote:
                    continue
                with _job_env(env, self.threads if i in todo else None):
                    results[i] = _run_one(job)
                bar.update()
        return results

    def _run_ray(self, jobs: list[Job], todo: list[int], env: dict, results: list, bar) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        self.connect()
        stored: dict[int, Any] = {}  # one object-store copy of each distinct large argument

        def ref(a):
            if isinstance(a, (str, int, float, bool, type(None))):
                return a
            if id(a) not in stored:
                stored[id(a)] = ray.put(a)
            return stored[id(a)]

        fn = _remote()
        pending = {fn.remote(jobs[i].fn, env, self.threads, *(ref(a) for a in jobs[i].args)): i for i in todo}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for r in done:
                    i = pending.pop(r)
                    try:
                        results[i] = ray.get(r)
                    except RayTaskError as e:  # the job raised: its own error
                        cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
                        raise SweepJobError(jobs[i].config, cause) from cause
                    except RayError as e:  # its worker died (memory, a signal)
                        raise SweepJobError(jobs[i].config, e) from e
                    bar.update()
        finally:
            for r in pending:
                ray.cancel(r, force=True)


def _run_one(job: Job):
    try:
        return job.fn(*job.args)
    except Exception as e:
        raise SweepJobError(job.config, e) from e

