"""The random-number-generator states a checkpoint carries, so that a resumed run draws
what the uninterrupted one would have: Python's, numpy's global one, torch's CPU one and,
where CUDA is in use, every device's. Stored as tensors, lists and scalars, which
``torch.load(weights_only=True)`` accepts."""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict:
    """Python, numpy (global legacy generator), torch CPU and CUDA RNG states.

    Stored as tensors, lists and scalars so the result survives ``weights_only`` loading.
    CUDA states are captured only if CUDA is initialised in this process (otherwise no CUDA
    random numbers have been drawn yet), so checkpointing a CPU run never creates a CUDA
    context.
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore RNG states captured by :func:`capture_rng_state` (e.g. after loading).

    Missing entries are left alone.  CUDA states are restored for as many devices as both
    sides have; a mismatch or missing CUDA gives a RuntimeWarning rather than an error, so a
    run can still resume on different hardware.
    """
    if "python" in state:
        py = state["python"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
    if "numpy" in state:
        npst = state["numpy"]
        keys = torch.as_tensor(npst["keys"]).numpy().astype(np.uint32)
        np.random.set_state(
            (
                npst["bit_generator"],
                keys,
                int(npst["pos"]),
                int(npst["has_gauss"]),
                float(npst["cached_gaussian"]),
            )
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state:
        saved = list(state["cuda"])
        if not torch.cuda.is_available():
            warnings.warn(
                "checkpoint holds CUDA RNG states but CUDA is not available; not restored",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        count = torch.cuda.device_count()
        if count != len(saved):
            warnings.warn(
                f"checkpoint holds CUDA RNG states for {len(saved)} devices, this machine has "
                f"{count}; restoring the first {min(count, len(saved))}",
                RuntimeWarning,
                stacklevel=2,
            )
        for device, rng in enumerate(saved[:count]):
            torch.cuda.set_rng_state(torch.as_tensor(rng, dtype=torch.uint8).cpu(), device)
