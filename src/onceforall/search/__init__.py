"""Architecture search over a supernet's space with cheap predictors.

Populations are integer gene matrices (:class:`ArchBatch`); for MBConv spaces MACs,
parameters and table latency are additive table lookups (:class:`AdditiveCost`), for
OFA-ResNet per-arch counts (:class:`ArchCost`); constraints are checked for feasibility
before any search starts (:class:`InfeasibleConstraintError`).

>>> from onceforall.search import macs_cost, parse_constraint, evolutionary_search
>>> limit = parse_constraint("macs<=300M", [macs_cost(supernet)])
>>> result = evolutionary_search(supernet.space, predictor, [limit])
>>> result.arch, result.accuracy, result.costs
"""

from .constraints import (
    Constraint,
    ConstraintSet,
    InfeasibleConstraintError,
    parse_constraint,
    parse_constraints,
)
from .evolution import (
    Predictor,
    SearchResult,
    as_predictor,
    evolutionary_search,
    random_search,
    torch_predictor,
)
from .objectives import (
    AdditiveCost,
    AdditiveTable,
    ArchCost,
    Cost,
    format_value,
    latency_cost,
    macs_cost,
    params_cost,
)
from .pareto import ParetoFront, crowding_distance, non_dominated_ranks, pareto_search
from .population import ArchBatch, GenomeLayout, genome_layout

__all__ = [
    "AdditiveCost",
    "ArchCost",
    "Cost",
    "AdditiveTable",
    "ArchBatch",
    "Constraint",
    "ConstraintSet",
    "GenomeLayout",
    "InfeasibleConstraintError",
    "ParetoFront",
    "Predictor",
    "SearchResult",
    "as_predictor",
    "crowding_distance",
    "evolutionary_search",
    "format_value",
    "genome_layout",
    "latency_cost",
    "macs_cost",
    "non_dominated_ranks",
    "params_cost",
    "parse_constraint",
    "parse_constraints",
    "pareto_search",
    "random_search",
    "torch_predictor",
]
