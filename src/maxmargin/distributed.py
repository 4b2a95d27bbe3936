"""Multi-process training on ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m maxmargin train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything runs in one
process and every helper here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if attempt and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and \
                int(os.environ.get("GROUP_WORLD_SIZE", "1")) == 1:
            # torchrun keeps one store across restarts, still holding the dead attempt's addresses: a
            # restarted rank could read its peer's old one and fail to connect (pytorch issue 135712). On
            # one node every worker has the same restart count, so it keeps the attempts apart.
            store, _, _ = next(dist.rendezvous("env://", rank, world))
            dist.init_process_group(backend, store=dist.PrefixStore(f"maxmargin/attempt-{attempt}", store),
                                    rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return Dist(rank, world, local), dev


def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (sum or max); returns ``t``. A no-op in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def all_gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out: list = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def rank_world() -> tuple[int, int]:
    """This process's rank and the world size of the initialized group ((0, 1) without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(t: Tensor) -> Tensor:
    """This rank's rows of ``t``: every ``world``-th one from ``rank`` (sizes differ by at most one)."""
    rank, world = rank_world()
    return t if world == 1 else t[rank::world]


def gather_shards(t: Tensor, n: int, dim: int = 0) -> Tensor:
    """Undo :func:`shard` along ``dim`` on every rank: the ``n`` rows in their original order."""
    rank, world = rank_world()
    if world == 1:
        return t
    t = t.movedim(dim, 0)
    size = -(-n // world)
    kind = t.dtype
    if kind == torch.bool:   # gloo cannot reduce or gather bool tensors
        t = t.to(torch.uint8)
    padded = torch.zeros((size, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *t.shape[1:]), dtype=t.dtype, device=t.device)
    for r, part in enumerate(parts):
        out[r::world] = part[:len(range(r, n, world))]
    return out.to(kind).movedim(0, dim)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (other wrappers stay).

    Attacks use it: they take input gradients only, which a DDP wrapper would
    wait on as if they were a training backward.
    """
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
