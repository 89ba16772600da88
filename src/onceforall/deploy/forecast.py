"""The work of ``ofa run``'s steps after training, for the run's forecast
(:mod:`onceforall.training.forecast`): the accuracy dataset, specialisation and export
in forward-pass MAC-images, the latency table from a probe of its backend. The predictor
fit, the searches and the Pareto plot take seconds and are left out."""

from __future__ import annotations

from ..latency.forecast import probe_network, probe_table_time
from ..models import Supernet
from ..predictors.dataset import dataset_archs, pending_archs
from ..storage.run_layout import RunLayout
from ..training import TrainConfig
from ..training.forecast import PlannedWork

__all__ = ["later_steps"]

ACCURACY_DATASET = "accuracy dataset"
LATENCY_TABLE = "latency table"
SPECIALISE = "specialise"
EXPORT = "export"
TIMED_CALLS = 35  # measure_latency's warm-up and timed calls
SAMPLED_ARCHS = 400  # archs of the accuracy dataset costed (all of them when fewer)


def later_steps(
    config: TrainConfig,
    supernet: Supernet,
    layout: RunLayout,
    test_images: int,
    *,
    accuracy_dataset: bool = True,
    latency_table: bool = True,
) -> list[PlannedWork]:
    """The planned work of the steps after training that ``layout`` does not hold yet
    (``test_images``: the size of the run's test split; without ``accuracy_dataset`` or
    ``latency_table``, a given predictor or table replaces that step)."""
    settings = config.specialize
    calibration = config.bn_recal_images
    archs = dataset_archs(supernet.space, settings.acc_dataset_archs, config.seed)
    sample = archs[:: max(1, len(archs) // SAMPLED_ARCHS)]
    mean_macs = sum(supernet.macs(a) for a in sample) / max(1, len(sample))
    work = []
    if accuracy_dataset:
        measured = max(0, config.holdout_size - calibration)
        if settings.acc_eval_images:
            measured = min(measured, settings.acc_eval_images)
        todo = pending_archs(archs, layout.accuracy_dataset)
        units = len(todo) * (calibration + measured) * mean_macs
        work.append(PlannedWork(ACCURACY_DATASET, forward_units=units))

    backend, threads = settings.latency_backend, settings.latency_threads
    net = probe_network(supernet, backend=backend, threads=threads)
    if latency_table and supernet.family.additive_costs and not layout.latency_table.is_file():
        seconds = probe_table_time(
            supernet, net, backend=backend, threads=threads, repeats=settings.latency_repeats
        )
        work.append(PlannedWork(LATENCY_TABLE, fixed_s=seconds))

    # Each target: its winner and the random baseline measured on the test split, the
    # winner timed on the table's backend; each export: ONNX export and check, timing.
    targets = len(settings.targets) if settings.targets else settings.num_targets
    per_net = (calibration + test_images) * mean_macs  # BN recalibration, then the test split
    timing = TIMED_CALLS * net.call_s + net.prepare_s
    work.append(
        PlannedWork(
            SPECIALISE,
            forward_units=targets * (1 + settings.random_baseline) * per_net,
            fixed_s=targets * timing,
        )
    )
    if settings.export:
        export_s = net.onnx_s + TIMED_CALLS * net.torch_call_s
        work.append(
            PlannedWork(EXPORT, forward_units=targets * per_net, fixed_s=targets * export_s)
        )
    return work
