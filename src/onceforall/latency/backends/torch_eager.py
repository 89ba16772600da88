"""PyTorch eager, on the CPU or a CUDA device: the network as the library runs it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ...errors import check_whole_number
from .base import Backend, Prepared, fixed_input

__all__ = ["TorchEager", "torch_threads"]


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set PyTorch's intra-op thread count (``None`` leaves it alone)."""
    if threads is None:
        yield
        return
    check_whole_number("threads", threads, 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TorchEager(Backend):
    name = "torch"
    runtime = "torch"
    precision = "fp32"
    cpu_only = False

    def prepare(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        device: torch.device,
        threads: int | None,
    ) -> Prepared:
        model = model.eval().to(device)
        x = fixed_input(input_shape).to(device)
        threads = self.threads_for(threads)
        if device.type != "cuda":
            return Prepared(lambda: model(x), threads)

        def run() -> None:
            model(x)
            torch.cuda.synchronize(device)

        return Prepared(run, threads)

    def threads_for(self, threads: int | None) -> int:
        return torch.get_num_threads() if threads is None else threads

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    @contextmanager
    def scope(self, threads: int | None) -> Iterator[None]:
        with torch_threads(threads), torch.inference_mode():
            yield
