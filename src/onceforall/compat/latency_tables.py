"""The authors' latency lookup tables, read as they ship them, and ours written in their
format.

Their tables are one YAML file per input size (``160_lookup_table.yaml``, ...), in a
folder named after the device (``note10/``). Each maps a layer's key, which spells its
kind and shapes (``expanded_conv-input:12x12x136-output:12x12x136-expand:408-kernel:3-
stride:1-idskip:1-se:1-hs:1``), to its ``mean`` time in ms (with ``count`` and ``std``).
A network's latency is the sum of its layers' means, which their tutorial's
``LatencyTable.predict_efficiency`` computes and :class:`AuthorsLatencyTable` reproduces.

Files are read with a safe YAML loader (their code calls ``yaml.load`` without one, which
current PyYAML refuses). Every key a supernet's sub-networks need is looked up once, when
the folder is read, so a table that lacks one is refused at once, naming the file and the
key. The keys come from the family (:attr:`~.base.ReferenceFormat.latency_keys`).

:func:`open_latency_table` is the one place a latency table is read: ours or theirs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..arch.base import describe_resolutions
from ..errors import InputNotFoundError
from ..latency.base import LatencyModel, LatencyTableError, MissingResolutionError
from ..latency.table import LatencyTable
from ..models import family_for
from ..storage.atomic import write_text_atomic
from ..storage.reading import read_text

__all__ = [
    "AuthorsLatencyTable",
    "check_latency_table",
    "open_latency_table",
    "write_authors_tables",
]

_FILE = re.compile(r"^(\d+)_lookup_table\.ya?ml$")
_SHAPELESS = ("resolutions", "dropout", "bn_eps", "bn_momentum")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # safe: builds plain data only


def _keys(supernet: Any) -> Any:
    """The family's key function, or an error saying the family has no such tables."""
    reference = family_for(supernet).reference
    if reference is None or reference.latency_keys is None:
        name = getattr(supernet, "name", type(supernet).__name__)
        raise LatencyTableError(f"the authors' lookup tables have no format for {name}")
    return reference.latency_keys


def _shape_fingerprint(supernet: Any) -> dict[str, Any]:
    return {k: v for k, v in supernet.config.to_dict().items() if k not in _SHAPELESS}


def _table_files(path: Path) -> dict[int, Path]:
    """Resolution -> file of the folder ``path`` (or of the one file ``path``)."""
    if not path.exists():
        raise InputNotFoundError(f"no latency table at {path}")
    files = [path] if path.is_file() else sorted(path.iterdir())
    found = {int(m.group(1)): f for f in files if (m := _FILE.match(f.name))}
    if not found:
        raise LatencyTableError(
            f"{path} holds no lookup table of the authors' (expected files named "
            "<resolution>_lookup_table.yaml, e.g. 160_lookup_table.yaml)"
        )
    return found


def _read_means(file: Path) -> dict[str, float]:
    """Key -> mean ms of one of their YAML files."""
    text = read_text(file, "lookup table")
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except RecursionError:
        raise LatencyTableError(f"{file} is not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise LatencyTableError(f"{file} is not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict) or not data:
        raise LatencyTableError(
            f"{file} is not a lookup table (expected a mapping of layer keys to "
            "{mean, std, count})"
        )
    means = {}
    for key, entry in data.items():
        mean = entry.get("mean") if isinstance(entry, dict) else None
        if isinstance(mean, bool) or not isinstance(mean, (int, float)):
            raise LatencyTableError(f"{file}: entry {key!r} has no numeric 'mean' (ms)")
        means[str(key)] = float(mean)
    return means


class AuthorsLatencyTable:
    """The authors' lookup tables of one device, resolved for one supernet: the ms of
    the fixed layers (in the order their code adds them) and of every block choice, per
    resolution they have a file for. It records where it came from (:attr:`origin`):
    their device's timings, with no calibration on this machine, so specialisation uses
    its predictions and does not measure here."""

    measurable_here = False

    def __init__(
        self,
        folder: Path,
        files: dict[int, Path],
        fixed: dict[int, list[float]],
        blocks: dict[tuple[int, int, int, int], float],
        supernet: Any,
    ) -> None:
        self.folder, self.files = folder, files
        self.device = (folder if folder.is_dir() else folder.parent).resolve().name
        self.resolutions = tuple(sorted(files))
        self._fixed, self._blocks = fixed, blocks
        self.space = supernet.space
        self.supernet_name = getattr(supernet, "name", None)
        self.fingerprint = _shape_fingerprint(supernet)
        self.origin = {
            "source": "the authors' lookup tables",
            "device": self.device,
            "files": [str(files[r]) for r in self.resolutions],
            "calibration": None,  # their device's means as they are
        }

    def describe(self) -> str:
        return (
            f"the authors' {self.device} lookup tables ({self.folder}; resolutions "
            f"{describe_resolutions(self.resolutions)}): timings on their device, no "
            "calibration on this machine"
        )

    def check_compatible(self, supernet: Any, source: str = "the table") -> None:
        if _shape_fingerprint(supernet) != self.fingerprint:
            name = getattr(supernet, "name", type(supernet).__name__)
            raise LatencyTableError(
                f"{source} was read for {self.supernet_name}, whose layers differ from {name}'s"
            )

    def _check_resolution(self, resolution: int) -> None:
        if resolution not in self._fixed:
            raise MissingResolutionError(
                f"{self.folder} has no lookup table for resolution {resolution}; it has "
                f"{', '.join(map(str, self.resolutions))}"
            )

    def fixed_ms(self, resolution: int) -> float:
        """The ms of what every sub-network at ``resolution`` runs (stem, first block,
        head)."""
        self._check_resolution(resolution)
        return sum(self._fixed[resolution])

    def block_ms(self, resolution: int, slot: int, kernel_size: int, expand_ratio: int) -> float:
        self._check_resolution(resolution)
        return self._blocks[(resolution, slot, kernel_size, expand_ratio)]

    def predict(self, arch: Any) -> float:
        """The ms their tutorial's ``predict_efficiency`` gives ``arch``: its layers' means
        added in the order their code adds them."""
        arch = self.space.parse(arch)
        self._check_resolution(arch.r)
        stem, first, *head = self._fixed[arch.r]
        total = stem + first
        for slot in self.space.active_slots(arch):
            total += self._blocks[(arch.r, slot, arch.ks[slot], arch.e[slot])]
        for part in head:
            total += part
        return total

    def measure_ms(self, model: nn.Module, resolution: int, repeats: int) -> float:
        raise LatencyTableError(
            f"{self.describe()}: it predicts {self.device} latency and cannot measure "
            "networks on this machine"
        )


def read_authors_tables(path: str | os.PathLike, supernet: Any) -> AuthorsLatencyTable:
    """The authors' lookup tables in the folder ``path`` (or the one file ``path``),
    every layer of ``supernet``'s sub-networks looked up at each of their resolutions."""
    path = Path(path)
    files = _table_files(path)
    keys_of = _keys(supernet)
    name = getattr(supernet, "name", None) or "this supernet"
    fixed: dict[int, list[float]] = {}
    blocks: dict[tuple[int, int, int, int], float] = {}
    for r, file in files.items():
        means = _read_means(file)
        try:
            fixed_keys, block_keys = keys_of(supernet.config, r)
        except ValueError as exc:
            raise LatencyTableError(f"{path}: {exc}") from None

        fixed[r] = [
            _mean(means, k, file, f"a fixed layer of {name} at {r}x{r}") for k in fixed_keys
        ]
        for (slot, k, e), key in block_keys.items():
            what = f"block slot {slot} with k={k}, e={e} of {name} at {r}x{r}"
            blocks[(r, slot, k, e)] = _mean(means, key, file, what)
    return AuthorsLatencyTable(path, files, fixed, blocks, supernet)


def _mean(means: dict[str, float], key: str, file: Path, what: str) -> float:
    if key not in means:
        raise LatencyTableError(
            f"{file} has no entry {key!r} ({what}): expected a lookup table of this "
            "supernet's layers"
        )
    return means[key]


def open_latency_table(path: str | os.PathLike, supernet: Any) -> LatencyModel:
    """The latency table at ``path`` for ``supernet``: ours (a JSON file written by
    :meth:`LatencyTable.save`) or the authors' (a folder of their YAML files, or one)."""
    path = Path(path)
    if path.is_file() and not _FILE.match(path.name):
        return LatencyTable.load(path, supernet)
    return read_authors_tables(path, supernet)


def check_latency_table(path: str | os.PathLike) -> None:
    """Read the latency table at ``path`` (as :func:`open_latency_table` would) without
    a supernet: one that is missing, unreadable or damaged is refused now, before a
    supernet exists to check it against."""
    path = Path(path)
    if path.is_file() and not _FILE.match(path.name):
        LatencyTable.load(path)
    else:
        for file in _table_files(path).values():
            _read_means(file)


def write_authors_tables(
    table: LatencyModel, supernet: Any, folder: str | os.PathLike
) -> list[Path]:
    """Write ``table`` (for ``supernet``) as the authors' lookup tables, one
    ``<r>_lookup_table.yaml`` per resolution in ``folder``, each written atomically. The
    fixed part of a network (stem, first block, head and any calibrated overhead) is
    written under the stem's key and the other fixed layers as 0, so that their code's
    sums give this table's predictions."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table.check_compatible(supernet)
    keys_of = _keys(supernet)
    written = []
    for r in table.resolutions:
        try:
            fixed_keys, block_keys = keys_of(supernet.config, r)
        except ValueError as exc:
            raise LatencyTableError(str(exc)) from None
        entries = {key: 0.0 for key in fixed_keys}
        entries[fixed_keys[0]] = float(table.fixed_ms(r))
        for (slot, k, e), key in block_keys.items():
            value = float(table.block_ms(r, slot, k, e))
            if entries.setdefault(key, value) != value:
                raise LatencyTableError(
                    f"the table gives two blocks of the same shape ({key}) different times"
                )
        header = (
            f"# {r}x{r} lookup table written by onceforall for {table.describe()}.\n"
            "# mean: ms. The stem's entry holds everything a network at this size always\n"
            "# runs (stem, first block, head, overhead); the other fixed layers hold 0.\n"
        )
        body = yaml.safe_dump({k: {"mean": v} for k, v in sorted(entries.items())})
        written.append(write_text_atomic(folder / f"{r}_lookup_table.yaml", header + body))
    return written
