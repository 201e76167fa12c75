"""Training on several processes at once, one per GPU, with PyTorch's DistributedDataParallel.

A script that calls :func:`ddpm_lib.train` runs unchanged under ``torchrun``::

    torchrun --nproc_per_node=4 my_training_script.py

Every process builds the same global batch from the same seed and trains on its own rows of it
(its share); DDP averages the gradients, so every process takes the same optimiser step, and with
equal shares the average of the per-process mean losses is the mean loss of the whole batch. The
objectives draw their random numbers for the whole batch and keep their own rows (see
:class:`~ddpm_lib.loop.Batch`), so N processes train exactly the model one process would, up to
the order of floating-point sums. Process 0 logs, calls the callback and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes: ``rank`` of ``size``, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world(device_type: str = "cpu") -> World:
    """The process group, joined from torchrun's environment variables when it is not joined yet."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} asks for {size} processes, but this PyTorch has no torch.distributed")
    # NCCL moves gradients between GPUs directly; gloo works on CPUs (and is what the tests use).
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def mean_over_processes(values: torch.Tensor, w: World) -> torch.Tensor:
    """The element-wise mean of ``values`` over all processes (itself with one process)."""
    if w.size == 1:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / w.size


def barrier(w: World) -> None:
    """Wait until every process gets here (so that a checkpoint written by process 0 is complete)."""
    if w.size > 1:
        dist.barrier()


def unwrap(model):
    """The model inside a DistributedDataParallel or ``torch.compile`` wrapper, for its attributes."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
