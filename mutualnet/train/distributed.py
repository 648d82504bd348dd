"""Process-group set-up from torchrun's environment, and the few collectives the engine needs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = ["Distributed", "resolve_device"]

#: how long a process idles after leaving the process group (see Distributed.shutdown)
_SETTLE_SECONDS = 0.2


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> "Distributed":
        """Join the process group torchrun describes (a no-op for a single process)."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            backend = "nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend=backend)
        return cls(rank, world_size, local_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over processes, on the tensor's own device (NCCL reduces only GPU tensors,
        so host tensors such as metric counts travel through the GPU and back)."""
        if not self.enabled:
            return tensor
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            reduced = tensor.to(f"cuda:{self.local_rank}")
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            return reduced.to(tensor.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def shutdown(self, wait: bool = False) -> None:
        """Leave the process group; ``wait``: first wait for every process (the end of a run
        that went well; an error path does not wait for a peer that may never arrive).

        Gloo's worker threads release the tensors of a finished collective only after the
        caller has moved on, and need the interpreter's lock for it. A process that exits at
        once can finalise the interpreter under them, and gloo then aborts it at exit
        ("terminate called without an active exception", SIGABRT) although the run is
        complete. So the process idles a moment, without the lock, before it goes on.
        """
        if self.enabled and dist.is_initialized():
            if wait:
                dist.barrier()
            dist.destroy_process_group()
            time.sleep(_SETTLE_SECONDS)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks the GPU of this process when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available; "
                              f"use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
