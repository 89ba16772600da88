"""Accuracy-versus-cost plots of a search: sampled architectures, the Pareto front, and
the sub-networks chosen from it with their measured accuracy.

matplotlib is optional (``pip install 'onceforall[deploy]'``) and imported only when a
plot is drawn; figures are rendered with the Agg canvas directly, so no pyplot state or
global backend is touched.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Tuple, Union

from ..search import pareto_search
from ..storage.atomic import write_bytes_atomic
from .export import MissingDependencyError

__all__ = ["ChosenPoint", "plot_pareto", "plot_run"]


@dataclass(frozen=True)
class ChosenPoint:
    """A chosen sub-network: its cost, measured accuracy, an optional label (e.g. the
    constraint it was chosen for) and optional predicted accuracy (drawn as a hollow
    marker joined to the measured one)."""

    cost: float
    accuracy: float
    label: str = ""
    predicted: float | None = None


Point = Tuple[float, float]
ChosenLike = Union[ChosenPoint, Tuple[float, float], Tuple[float, float, str]]


def _chosen(point: ChosenLike) -> ChosenPoint:
    if isinstance(point, ChosenPoint):
        return point
    cost, accuracy, *rest = point
    return ChosenPoint(float(cost), float(accuracy), str(rest[0]) if rest else "")


def plot_pareto(
    path_png: str | os.PathLike[str],
    sampled: Sequence[Point],
    front: Sequence[Point],
    chosen: Sequence[ChosenLike] = (),
    *,
    cost_label: str,
    accuracy_label: str = "top-1 accuracy (%)",
    title: str | None = None,
) -> Path:
    """Draw ``(cost, accuracy)`` of ``sampled`` architectures as a scatter, ``front`` as
    a line (sorted by cost) and ``chosen`` points highlighted and annotated with their
    measured accuracy; write a PNG atomically to ``path_png`` and return its path.

    ``cost_label`` names the cost axis, e.g. ``"latency (ms)"`` or ``"MMACs"``.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "plotting needs the 'matplotlib' package, which is not installed: "
            "pip install 'onceforall[deploy]'"
        ) from exc
    figure = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    if sampled:
        xs, ys = zip(*sampled)
        ax.scatter(xs, ys, s=8, alpha=0.35, color="tab:gray", label="sampled", linewidths=0)
    if front:
        xs, ys = zip(*sorted(front))
        ax.plot(xs, ys, "-o", color="tab:blue", markersize=3, linewidth=1.5, label="Pareto front")
    points = [_chosen(p) for p in chosen]
    with_prediction = [p for p in points if p.predicted is not None]
    for i, point in enumerate(points):
        if point.predicted is not None:
            ax.plot(
                [point.cost, point.cost],
                [point.predicted, point.accuracy],
                color="tab:red",
                linewidth=0.8,
            )
            ax.scatter(
                [point.cost],
                [point.predicted],
                s=40,
                facecolors="none",
                edgecolors="tab:red",
                label="predicted" if point is with_prediction[0] else None,
            )
        ax.scatter(
            [point.cost],
            [point.accuracy],
            s=70,
            marker="*",
            color="tab:red",
            zorder=3,
            label="chosen (measured)" if i == 0 else None,
        )
        text = f"{point.label}: {point.accuracy:.2f}%" if point.label else f"{point.accuracy:.2f}%"
        ax.annotate(
            text,
            (point.cost, point.accuracy),
            textcoords="offset points",
            xytext=(6, -12 if i % 2 else 6),
            fontsize=8,
            color="tab:red",
        )
    ax.set_xlabel(cost_label)
    ax.set_ylabel(accuracy_label)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if sampled or front or points:
        ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_bytes_atomic(path_png, buffer.getvalue())


def plot_run(path, space, predictor, costs, table, rows, chosen) -> Path | None:
    """``ofa run``'s plot: the Pareto front ``predictor`` gives over the searched
    ``space``, against table latency (MACs without a table), with the accuracy dataset's
    ``rows`` and the ``chosen`` sub-networks; skipped (None) when matplotlib is missing."""
    metric = "macs" if table is None else "latency_ms"
    front = pareto_search(
        space,
        predictor,
        costs[metric],
        generations=200,
        initial=[c.arch for c in chosen],
    )
    sampled = [(costs[metric].of(r["arch"]), r["accuracy"]) for r in rows]
    points = [
        ChosenPoint(
            (c.measured_latency_ms or c.predicted_latency_ms)
            if table is not None
            else costs["macs"].of(c.arch),
            c.measured_accuracy if c.measured_accuracy is not None else c.predicted_accuracy,
            c.target,
            c.predicted_accuracy,
        )
        for c in chosen
    ]
    try:
        return plot_pareto(
            path,
            sampled,
            list(zip(front.costs[metric].tolist(), front.accuracy.tolist())),
            points,
            cost_label=(
                "MACs"
                if table is None
                else f"latency measured on this device (ms, {table.backend})"
                if table.measurable_here
                else "latency predicted by the table (ms, another device)"
            ),
            title="sampled (held-out top-1), predicted front, chosen (test top-1)",
        )
    except MissingDependencyError:
        return None
