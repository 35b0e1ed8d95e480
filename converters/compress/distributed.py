"""torch.distributed, as launched by `torchrun`: one process per device, ranks from the environment.

Without torchrun (WORLD_SIZE unset or 1) every function here is a no-op and the process is rank 0, so the
same code runs on one laptop core and on many GPUs. CPU processes talk over gloo, GPUs over NCCL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Only rank 0 writes files and prints progress."""
    return rank() == 0


def device() -> str:
    """cuda:LOCAL_RANK when this process has a GPU, else cpu."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


def init() -> bool:
    """Join the process group torchrun set up (once); True when running distributed."""
    import torch.distributed as dist

    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device().startswith("cuda") else "gloo")
    return True


def barrier() -> None:
    import torch.distributed as dist

    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[bool]:
    """Rank 0 runs the block (yielding True) while the others wait at a barrier (yielding False)."""
    try:
        yield is_main()
    finally:
        barrier()


def mean(values: list[float]) -> list[float]:
    """The element-wise mean of `values` over all ranks (for logging losses)."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1 or not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device())  # NCCL reduces GPU tensors only
    dist.all_reduce(t)
    return (t / world_size()).cpu().tolist()
