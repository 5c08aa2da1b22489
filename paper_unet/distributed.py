"""Where training runs: the device, and data-parallel training across processes (torchrun).

Data-parallel training (DDP) is our scaling-out decision, not the paper's (one GPU): every process
draws its own tile per step, the gradients are averaged, and rank 0 alone writes files. Decisions
that stop training are taken collectively (`reduce_min`), so no rank is left waiting.
"""

from __future__ import annotations

import atexit
import os

import torch

__all__ = ["distributed", "is_main_process", "resolve_device", "reduce_min"]


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under torchrun (WORLD_SIZE > 1).

    Data-parallel training (DDP): every process draws its own tile per step (sample stream = rank),
    gradients are averaged across processes, so the effective batch is world_size x batch_size.
    Backend: NCCL when CUDA is available, else gloo (CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(_leave_group)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def _leave_group() -> None:
    """End the process group at exit (a local call): left to the interpreter's teardown, gloo's threads
    can abort the process ("terminate called without an active exception", seen once in a test run)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return distributed()[0] == 0


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available: use "
                           "--device cpu (and a CPU profile such as `cpu` or `smoke`)")
    return torch.device(name)


def reduce_min(value: float, device: torch.device) -> float:
    """The smallest ``value`` over all processes (a collective: every rank must call it)."""
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return float(tensor.item())
