"""Governed training over several processes with ``torch.distributed`` (``torchrun``, ``accelerate launch``).

One process per rank trains the same global batch as one process would: every rank draws the
global batch and its noise from the same seeded generators and trains its slice (``shard``), the
gradients are averaged across ranks (DDP's all-reduce, or ``all_reduce_mean`` on the steps where the
provenance index computes its per-source shares and reduces those instead), and the governance
state that depends on the batch (the index's groups and loss weights, routing's band counts, the
monitor's scores) is gathered so that every rank holds the same state. Rank 0 writes the files.

With ``WORLD_SIZE`` unset or 1 nothing here talks to another process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from govlab.errors import GovlabError


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """The current process group (one process when none is initialized)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    backend = dist.get_backend()
    if backend == "undefined":  # a group with a backend per device (accelerate's): e.g. "cpu:gloo,cuda:nccl"
        backend = str(dist.get_backend_config())
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                 backend)


def is_main() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return world().main


def init_from_env(device: str = "cpu") -> World:
    """Join the process group that ``torchrun``/``accelerate launch`` describe in the environment
    (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo for a CPU device, NCCL for
    CUDA (each rank on ``cuda:LOCAL_RANK``). One process (no ``WORLD_SIZE``, or 1) joins nothing."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise GovlabError(f"WORLD_SIZE={size} but this torch build has no torch.distributed")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    return world()


def rank_device(device: torch.device) -> torch.device:
    """A CUDA device without an index, under several ranks: this rank's ``cuda:LOCAL_RANK``."""
    w = world()
    if w.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", w.local_rank)
    return device


def check_batch(batch_size: int, w: World | None = None, *, where: str = "train.batch_size") -> int:
    """The per-rank batch of a global ``batch_size``; a rank count that does not divide it is refused."""
    w = w or world()
    if batch_size % w.size:
        raise GovlabError(f"{where} {batch_size} is not divisible by the {w.size} ranks (WORLD_SIZE); the "
                          f"global batch is split evenly across ranks: use a batch size that is a multiple of "
                          f"{w.size}, or {batch_size // w.size * w.size or w.size}")
    return batch_size // w.size


def check_same(value: str, what: str) -> None:
    """Refuse a launch whose ranks disagree on ``value`` (a hash of the config or data): every rank
    gathers every rank's value and raises the same error, naming the ranks that differ."""
    w = world()
    if not w.active:
        return
    values: list = [None] * w.size
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        by_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise GovlabError(f"the {w.size} ranks of this launch were given different {what} ({by_rank}); every "
                          "rank must run the same config on the same data")


def shard(t, w: World | None = None):
    """This rank's contiguous slice of a global batch (a tensor or a list)."""
    w = w or world()
    if not w.active:
        return t
    n = len(t) // w.size
    return t[w.rank * n:(w.rank + 1) * n]


def _comm(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the device the backend communicates from (CUDA for NCCL)."""
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (the same shape on every rank) concatenated along dim 0 in rank order, on
    ``t``'s device."""
    w = world()
    if not w.active:
        return t
    src = _comm(t.contiguous())
    out = [torch.empty_like(src) for _ in range(w.size)]
    dist.all_gather(out, src)
    return torch.cat(out).to(t.device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``t`` (a new tensor on ``t``'s device)."""
    if not world().active:
        return t
    src = _comm(t.clone())
    dist.all_reduce(src, op=dist.ReduceOp.SUM)
    return src.to(t.device)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``t``."""
    w = world()
    return all_reduce_sum(t) / w.size if w.active else t


def average_gradients(params: list[torch.Tensor]) -> None:
    """Each parameter's gradient set to its mean over the ranks (a rank whose step did not reach it
    adds zeros), and left at None where no rank's step reached it, as DDP with
    ``find_unused_parameters=True`` does. One all-reduce of the flattened gradients and flags."""
    w = world()
    if not w.active or not params:
        return
    dtype = params[0].dtype
    for p in params[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    reached = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=params[0].device)
    flat = all_reduce_sum(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                                     for p in params] + [reached]))
    k = len(params)
    total, reached = flat[:-k].div_(w.size), (flat[-k:] > 0).tolist()
    start = 0
    for p, on in zip(params, reached):
        n = p.numel()
        p.grad = total[start:start + n].view_as(p).to(p.dtype) if on else None
        start += n


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj`` (small: scores, flags), in rank order (trusted: our own ranks)."""
    w = world()
    if not w.active:
        return [obj]
    out: list = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world().active:
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """``DistributedDataParallel`` over ``model`` under several ranks, else None. Unused parameters
    are expected (routing leaves bands no sample of a rank's slice may change out of the graph):
    DDP sums every rank's gradient, leaves those no rank reached at None, and the masked gradients
    of the routed ops are summed like any others."""
    if not world().active:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)


def describe(w: World | None = None) -> dict:
    w = w or world()
    return {"world_size": w.size, "backend": w.backend or "none"}
