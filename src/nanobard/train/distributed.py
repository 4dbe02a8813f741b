"""Data-parallel training on PyTorch DDP, started by ``torchrun`` (NCCL on CUDA, gloo on CPU).

    torchrun --nproc_per_node 2 -m nanobard train --preset quick ...

Every rank draws the same global batch from the same seeded generator and keeps its own slice
of rows, so ranks see different data, the global batch is what the config says, and the averaged
gradient equals the single-process gradient of that batch. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (B, ...) -> (B / world, ...)."""
        if not self.enabled:
            return x
        b = x.size(0) // self.world
        return x[self.rank * b : (self.rank + 1) * b]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a step horizon each rank fitted to its own clock, the
        decision to stop: ranks that disagreed on when to stop would wait for each other
        forever)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def choice_from_main(self, choice: T, options: tuple[T, ...]) -> T:
        """``from_main`` for one of a few known ``options``: a one-integer broadcast, cheap enough
        to run at every training step."""
        return options[self.ints_from_main(options.index(choice))[0]]

    def ints_from_main(self, *values: int) -> tuple[int, ...]:
        """Rank 0's ``values`` on every rank: one small tensor broadcast (no pickling), cheap
        enough to run at every training step."""
        if not self.enabled:
            return values
        on = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend() == "nccl"
            else torch.device("cpu")
        )
        box = torch.tensor(values, dtype=torch.long, device=on)
        dist.broadcast(box, src=0)
        return tuple(int(v) for v in box.tolist())

    def gather_rng_states(self) -> list[torch.Tensor]:
        """The CPU RNG state of every rank (dropout masks differ per rank), in rank order."""
        if not self.enabled:
            return [torch.get_rng_state()]
        states: list[torch.Tensor] = [torch.empty(0)] * self.world
        dist.all_gather_object(states, torch.get_rng_state())
        return states


def setup(device_type: str) -> Dist:
    """Join the process group that torchrun describes in the environment (no-op when alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    return Dist(rank=rank, world=world, local_rank=local_rank)


def joined() -> Dist:
    """The ranks of a process group this process has already joined (the Hugging Face Trainer
    joins torchrun's itself), or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
