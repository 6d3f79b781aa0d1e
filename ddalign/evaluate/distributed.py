"""Several processes (GPUs or machines) share one evaluation: the prompt set is split over the
processes, rank-strided, and the counts are summed over all of them after each batch round.

Every process then holds the same global counts, so every process takes the same early-stop
decision at the same round and reaches the same verdict; no process waits on a collective the
others skipped. Works under `accelerate launch` and `torchrun` (both set RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT / LOCAL_RANK), with gloo on CPU and NCCL on GPU; a plain `python`
run is a single process and touches no `torch.distributed` state.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

from ddalign.errors import DdalignError

T = TypeVar("T")

ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR")
"""Present together: this process was started by a launcher and should join its group."""


@dataclass
class Dist:
    """Rank, world size and the collectives the oracle needs (single process: identities)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: single process
    owns_group: bool = False  # True when from_env initialised the group (close() ends it)

    @classmethod
    def single(cls) -> "Dist":
        return cls()

    @classmethod
    def from_env(cls, backend: str | None = None) -> "Dist":
        """Join the running process group, or start one from launcher variables, or run alone.

        - `torch.distributed` already initialised (e.g. by accelerate): use it as it is;
        - RANK, WORLD_SIZE and MASTER_ADDR set with WORLD_SIZE > 1: initialise with `env://`
          (backend: `backend`, else NCCL when CUDA is present, else gloo);
        - otherwise: a single process.
        """
        import torch.distributed as dist

        local_rank = _env_int("LOCAL_RANK", 0)
        if dist.is_available() and dist.is_initialized():
            return cls(
                rank=dist.get_rank(),
                world_size=dist.get_world_size(),
                local_rank=local_rank,
                backend=str(dist.get_backend()),
                owns_group=False,
            )
        if not all(v in os.environ for v in ENV_VARS):
            return cls(local_rank=local_rank)
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
        if world < 1 or not 0 <= rank < world:
            raise DdalignError(f"RANK={rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
        if world == 1:
            return cls(local_rank=local_rank)
        if not dist.is_available():
            raise DdalignError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if chosen == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=chosen, init_method="env://", rank=rank, world_size=world)
        return cls(rank=rank, world_size=world, local_rank=local_rank, backend=chosen, owns_group=True)

    # --- where this process works ------------------------------------------------------------
    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def device(self) -> str:
        """The device this process should load its model on: its own GPU under NCCL, else CPU
        (single process: CUDA when present)."""
        if self.backend == "nccl":
            return f"cuda:{self.local_rank}"
        if self.backend is None and torch.cuda.is_available():
            return "cuda"
        return "cpu"

    def shard_indices(self, n: int) -> list[int]:
        """This process's share of n items, rank-strided: rank, rank + world, ..."""
        return list(range(self.rank, n, self.world_size))

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's items (rank-strided: balanced to within one item, order kept)."""
        return [items[i] for i in self.shard_indices(len(items))]

    def rounds(self, n: int, batch_size: int) -> int:
        """Batch rounds needed so that every process gets through its share of n items: the same
        number on every process (a process past its share joins the rounds with zeros)."""
        if batch_size < 1:
            raise DdalignError(f"batch_size: expected a positive integer, got {batch_size}")
        return math.ceil(math.ceil(n / self.world_size) / batch_size) if n else 0

    # --- collectives -------------------------------------------------------------------------
    def all_sum(self, values: Sequence[int | float]) -> list[int | float]:
        """Element-wise sum over all processes (one all-reduce); ints stay ints.

        Summed in float64: integer counts stay exact below 2**53.
        """
        values = list(values)
        if not self.is_distributed:
            return values
        import torch.distributed as dist

        device = self.device if self.backend == "nccl" else "cpu"
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        summed = tensor.cpu().tolist()
        return [int(round(s)) if isinstance(v, (int, bool)) else s for v, s in zip(values, summed)]

    def all_equal(self, value: int) -> bool:
        """True when every process holds the same integer (a cheap agreement check)."""
        if not self.is_distributed:
            return True
        import torch.distributed as dist

        device = self.device if self.backend == "nccl" else "cpu"
        tensor = torch.tensor([float(value), -float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        high, neg_low = tensor.cpu().tolist()
        return high == -neg_low

    def barrier(self) -> None:
        if self.is_distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """End the process group if this helper started it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def describe(self) -> dict:
        return {"world_size": self.world_size, "backend": self.backend or "single"}


def launched_as_main() -> bool:
    """Whether this process is the one that prints: rank 0 of a launcher's group, or a lone
    process (the rule `Dist.from_env` follows), read without joining any group."""
    return not all(v in os.environ for v in ENV_VARS) or _env_int("RANK", 0) == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DdalignError(f"environment variable {name}={raw!r}: expected an integer") from None
