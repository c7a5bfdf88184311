"""Distributed data parallel through torchrun: process group setup from the environment, rank-0 duties,
and the few collectives the training loop needs (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment; a single process otherwise."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def teardown(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first waits for the others: a rank that
    destroyed its gloo group while another still finished its last collective was seen to abort
    ("terminate called without an active exception"). After an error no barrier (the others may never come)."""
    if info.enabled and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def agree(info: DistInfo, interrupted: bool, over_time: bool, elapsed: float,
          device: torch.device) -> tuple[bool, bool, float]:
    """The stop requests (true everywhere when true on any rank: ranks that disagree hang) and the run's
    elapsed time (the latest of all ranks: a schedule planned on time must give every rank the same rate)."""
    if not info.enabled:
        return interrupted, over_time, elapsed
    t = torch.tensor([float(interrupted), float(over_time), elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t[0]), bool(t[1]), t[2].item()


def sum_over_ranks(info: DistInfo, value: int, device: torch.device) -> int:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


def mean_over_ranks(info: DistInfo, value: float, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.item() / info.world_size


def gather_objects(info: DistInfo, obj) -> list:
    """`obj` of every rank, in rank order (every rank gets the list)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj):
    """Rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
