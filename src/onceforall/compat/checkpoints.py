"""Supernet checkpoints saved by the authors' code (the ``ofa`` package) loaded into ours.

Which keys of theirs hold which of our tensors is a fact of each family, which its
:class:`~.base.ReferenceFormat` records (:mod:`.mbconv`, :mod:`.resnet`); this module
reads the file (``torch.load(weights_only=True)``: nothing in it is executed), checks it
is such a checkpoint, and loads it by name, refusing missing or unexpected keys and wrong
shapes before anything is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RunDirectoryError, UnknownNameError
from ..models import Supernet, create_supernet
from ..models.family import family_for
from ..models.registry import supernet_family
from ..storage.run_guard import claim_run_directory, holds_files, run_lock
from ..storage.run_layout import RunLayout
from .base import (
    NetConfigError,
    ReferenceCheckpointError,
    ReferenceFormat,
    load_mapped,
    read_state_dict,
)

__all__ = [
    "REFERENCE_NAMES",
    "NetConfigError",
    "ReferenceCheckpointError",
    "import_reference",
    "load_mapped",
    "load_reference_checkpoint",
    "read_state_dict",
    "reference_keys",
]

# The authors' names for their released supernets -> our registry names.
REFERENCE_NAMES = {
    "ofa_mbv3_d234_e346_k357_w1.0": "ofa_mbv3_w1.0",
    "ofa_mbv3_d234_e346_k357_w1.2": "ofa_mbv3_w1.2",
    "ofa_proxyless_d234_e346_k357_w1.3": "ofa_proxyless_w1.3",
    "ofa_resnet50": "ofa_resnet50",
    "ofa_resnet50_d0-1-2_e0.2-0.25-0.35_w0.65-0.8-1.0": "ofa_resnet50",  # their file name
}


def _reference_format(item: object) -> ReferenceFormat:
    family = family_for(item)
    if family.reference is None:
        raise UnknownNameError(f"the {family.tag} family has no mapping to the authors' package")
    return family.reference


def reference_keys(net: Supernet) -> dict[str, str]:
    """Our state-dict key -> the key the authors' code uses for the same tensor."""
    return _reference_format(net).supernet_keys(net)


def load_reference_checkpoint(path: str | os.PathLike, name: str, **overrides) -> Supernet:
    """Our supernet holding the weights of a checkpoint saved by the authors' code.

    ``name`` is their name (``ofa_mbv3_d234_e346_k357_w1.0``, ...) or ours
    (``ofa_mbv3_w1.0``, ...; see :data:`REFERENCE_NAMES`);
    the number of classes is read from the checkpoint. Missing or unexpected keys and
    wrong shapes are refused, listed by name.
    """
    name = REFERENCE_NAMES.get(name, name)
    if name not in REFERENCE_NAMES.values():
        known = ", ".join(f"{k} ({v})" for k, v in REFERENCE_NAMES.items())
        raise ReferenceCheckpointError(f"no reference mapping for {name!r}; known: {known}")
    theirs = read_state_dict(Path(path))
    spec = _reference_format(supernet_family(name))
    if not all(any(key in theirs for key in spellings) for spellings in spec.required):
        keys = " and ".join(repr(spellings[0]) for spellings in spec.required)
        raise ReferenceCheckpointError(
            f"{path} has no {keys}: not an {spec.description} checkpoint"
        )
    classifier = next(theirs[key] for key in spec.classifier if key in theirs)
    net = create_supernet(name, num_classes=classifier.shape[0], **overrides)
    mapping = spec.supernet_keys(net)
    theirs = spec.normalise(theirs, set(mapping.values()))
    load_mapped(net, theirs, mapping, f"{path} does not fit {name}")
    return net.eval()


def _check_new_run(layout: RunLayout) -> None:
    if layout.root.exists() and not layout.root.is_dir():
        raise RunDirectoryError(f"{layout.root} is a file; import-reference writes a folder")
    if holds_files(layout):
        raise RunDirectoryError(
            f"{layout.root} is not empty: import-reference writes a new run directory (a "
            "run's accuracy dataset, predictor and exports belong to its own supernet); "
            "choose a new folder"
        )


def import_reference(
    path: str | os.PathLike, name: str, run_dir: str | os.PathLike, config: str | None = None
) -> Path:
    """Write a run directory holding the authors' supernet, so that ``ofa acc-dataset``,
    ``specialize``, ``export`` and further training work on it as on a supernet trained
    here. ``config`` (a preset or YAML file; default: the family's ImageNet preset)
    supplies the data settings (resolutions, splits) and the stages. ``run_dir`` must be
    new or empty: importing over a run would leave its predictor and tables, made from
    other weights, beside the new supernet."""
    from ..storage.checkpoint import save_checkpoint
    from ..training import load_config
    from ..training.run_dir import write_run_config

    layout = RunLayout(run_dir)
    _check_new_run(layout)  # before reading the file, and again under the lock
    net = load_reference_checkpoint(path, name)
    ours = REFERENCE_NAMES.get(name, name)
    if config is None:
        config = family_for(net).default_preset
    settings = load_config(config, {"supernet": ours})
    with run_lock(layout.root):
        _check_new_run(layout)
        claim_run_directory(layout.root)
        write_run_config(layout.root, settings)
        state = {"model": net.state_dict(), "stage": f"reference:{Path(path).name}"}
        save_checkpoint(layout.supernet, "supernet", state, keep=1)
    return layout.root
