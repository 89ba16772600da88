"""Multi-process training under torchrun: set-up, gradient averaging, consistency checks.

Several sub-networks run per optimiser step and each leaves some parameters unused, which
is the case DistributedDataParallel handles least well (``find_unused_parameters`` plus
``no_sync``). Instead, the accumulated gradients are averaged across workers once per
step, in one flattened all-reduce, and BN buffers are broadcast from rank 0, which leaves
every worker with identical weights after every step.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError

__all__ = [
    "DistEnv",
    "init_distributed",
    "parse_device",
    "average_gradients",
    "barrier",
    "broadcast_buffers",
    "digest",
    "check_consistent",
    "deterministic_kernels",
]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def parse_device(device: str | torch.device | None) -> torch.device:
    """The device ``device`` names (None: cuda when available, else cpu); a name torch
    does not know, or a CUDA device this machine lacks, is a :class:`ConfigError`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r}: this machine has no CUDA device; use cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s)")
    return dev


def init_distributed(device: str | None = None) -> DistEnv:
    """Read torchrun's environment; start the process group (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = parse_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """With ``enabled``, only deterministic kernels while the block runs (cuDNN's and
    cuBLAS's included), so that a GPU run stopped and resumed ends with the weights of
    an uninterrupted one, at some cost in speed; the previous settings after. On the CPU
    training is deterministic without it. An op with no deterministic CUDA kernel warns
    (naming itself) rather than stopping the run."""
    if not enabled:
        yield
        return
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    # PyTorch reads this once, at the process's first cuBLAS call: it holds where training
    # is the process's first GPU work (ofa train, ofa finetune), as it is here.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        algorithms, warn_only, cudnn_deterministic, benchmark, workspace = before
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = benchmark
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def average_gradients(model: nn.Module, env: DistEnv) -> None:
    """Average ``.grad`` over workers (missing gradients count as zero)."""
    if not env.enabled:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def barrier(env: DistEnv) -> None:
    """Wait for every worker (for files that rank 0 writes and the others read)."""
    if env.enabled:
        dist.barrier()


def broadcast_buffers(model: nn.Module, env: DistEnv) -> None:
    """Make BN running statistics identical on every worker (rank 0's)."""
    if not env.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def digest(*items: object) -> str:
    """A short hash of tensors and plain values, for cross-worker comparisons."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, torch.Tensor):
            h.update(item.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(item, nn.Module):
            for tensor in item.state_dict().values():
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(item).encode())
    return h.hexdigest()[:16]


def check_consistent(env: DistEnv, **digests: str) -> dict[str, list[str]]:
    """Gather each worker's digests; raise if workers disagree. Returns what was gathered."""
    if not env.enabled:
        return {k: [v] for k, v in digests.items()}
    gathered: list[dict[str, str]] = [{} for _ in range(env.world_size)]
    dist.all_gather_object(gathered, digests)
    result = {k: [g[k] for g in gathered] for k in digests}
    diverged = [k for k, values in result.items() if len(set(values)) > 1]
    if diverged:
        raise RuntimeError(f"workers diverged in {', '.join(diverged)}: {result}")
    return result
