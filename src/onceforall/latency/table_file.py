"""The latency table's file: a JSON record of the raw entries, the calibration networks
and what the table was timed with and on (:meth:`LatencyTable.save
<onceforall.latency.table.LatencyTable.save>` and ``load`` call these).

Format 3 is current: it added the calibration's cost per part (``ms_per_part``), which a
format-2 table did not fit (read as 0, its predictions are unchanged); a package that
reads format 2 only refuses a format-3 table rather than predicting without that term.
Format 1 tables were written before the MBConv config gained the fields of
OFA-ProxylessNAS; such a table was built for OFA-MobileNetV3, so reading one fills those
fields with OFA-MobileNetV3's values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arch import Arch
from ..storage.reading import loads_json, read_text
from .base import LatencyTableError

if TYPE_CHECKING:
    from .table import LatencyTable

FORMAT = "onceforall-latency-table"
VERSION = 3
SAVED_FIELDS = tuple(  # the table's fields a record holds as they are
    "supernet_name fingerprint backend batch_size threads statistic device device_description "
    "versions resolutions overhead_ms scale ms_per_mparam ms_per_part calibration_error "
    "build_seconds".split()
)
_V1_FINGERPRINT_DEFAULTS = {
    "stem_act": "h_swish",
    "first_block_act": "relu",
    "first_block_shortcut": True,
    "final_act": "h_swish",
}
_V1_STAGE_DEFAULTS = {"max_depth": 4}


def to_record(table: LatencyTable) -> dict[str, Any]:
    """The JSON record of ``table`` (strict JSON: a NaN calibration error is null)."""
    space, ks = table.space, table.space.kernel_sizes
    data: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    data.update({name: getattr(table, name) for name in SAVED_FIELDS})
    if np.isnan(table.calibration_error):
        data["calibration_error"] = None
    if table.bundle_sha256:
        data["bundle_sha256"] = table.bundle_sha256
    data["calibration"] = [{"arch": a.to_dict(), "ms": ms} for a, ms in table.calibration]
    data["entries"] = {key: list(value) for key, value in table.entries.items()}
    data["index"] = {  # resolution -> [slot][k][e] -> entry key
        str(r): [
            [[table.index[(r, s, k, e)] for e in space.expand_ratios] for k in ks]
            for s in range(space.num_slots)
        ]
        for r in table.resolutions
    }
    return data


def read_record(path: str | Path) -> dict[str, Any]:
    """The record in the file at ``path``; :class:`LatencyTableError` if it is not a
    latency table or of a version this package does not read."""
    try:
        data = loads_json(read_text(path, "latency table"))
    except json.JSONDecodeError as exc:
        raise LatencyTableError(f"{path} is not a latency table: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LatencyTableError(f"{path} is not a onceforall latency table")
    if data.get("version") not in (1, 2, VERSION):
        raise LatencyTableError(
            f"{path} is a version {data.get('version')} latency table; "
            f"this onceforall reads versions 1 to {VERSION}"
        )
    return data


def fields_of(data: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~onceforall.latency.table.LatencyTable` fields a record holds (an
    error of the record's shape raises whatever the Python that reads it raises: the
    caller reports the file as damaged)."""
    if data["version"] == 1:
        data = _upgrade_from_v1(data)
    if data["version"] == 2:
        data = {**data, "ms_per_part": 0.0, "version": VERSION}  # not fitted before format 3
    fp = data["fingerprint"]
    fields = {name: data[name] for name in SAVED_FIELDS}
    fields["resolutions"] = tuple(fields["resolutions"])
    if fields["calibration_error"] is None:
        fields["calibration_error"] = float("nan")
    fields["bundle_sha256"] = data.get("bundle_sha256")  # absent before bundles
    fields["entries"] = {key: (float(v[0]), float(v[1])) for key, v in data["entries"].items()}
    fields["calibration"] = [
        (Arch(*(tuple(n["arch"][key]) for key in ("ks", "e", "d")), n["arch"]["r"][0]), n["ms"])
        for n in data["calibration"]
    ]
    fields["index"] = {
        (int(r), s, k, e): key
        for r, slots in data["index"].items()
        for s, per_k in enumerate(slots)
        for k, per_e in zip(fp["kernel_sizes"], per_k)
        for e, key in zip(fp["expand_ratios"], per_e)
    }
    return fields


def _upgrade_from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A format-1 record as format 2: the config fields it lacks get OFA-MobileNetV3's
    values, the only supernet format 1 was written for."""
    fingerprint = {**_V1_FINGERPRINT_DEFAULTS, **data["fingerprint"]}
    fingerprint["stages"] = [{**_V1_STAGE_DEFAULTS, **s} for s in fingerprint["stages"]]
    return {**data, "fingerprint": fingerprint, "version": 2}
