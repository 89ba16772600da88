"""A model family: the one object the rest of the code asks about a kind of supernet.

A family bundles its supernet, static sub-network, config and space classes with what
generic code needs to know of it: the tag its exports carry, whether its costs are
additive per block choice (which is what per-block latency tables and table-driven
search costs need), the training preset of its ImageNet recipe, and how the authors'
package stores it. Code outside a family's own modules asks ``family_for(x)`` and never
tests which family it holds.

What a new family writes: its space and arch value (``arch/<family>.py``, with a genome
for search), its elastic operators (``nn/``), its supernet, sub-network and cost model
(``models/<family>.py``), optionally how the authors' package names its tensors
(``compat/<family>.py``), and one :func:`register_family` call plus its named supernets
in :mod:`.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["Family", "all_families", "family_for", "register_family"]


@dataclass(frozen=True)
class Family:
    """What the code outside a family may ask of it."""

    tag: str  # written as "family" in an export's spec.json
    supernet: type  # the elastic supernet (a ``Supernet``)
    subnet: type  # the static sub-network; ``subnet(config, arch)`` builds one
    config: type  # the config dataclass (``from_dict``, ``to_dict``, ``.space``)
    space: type  # the arch space class (``arch.base.Space``)
    # Costs are sums of per-(slot, choice) parts (``supernet.cost_parts``): MACs and
    # params become table lookups in search, and latency can be a per-block table.
    additive_costs: bool
    default_preset: str  # the training preset of its ImageNet recipe
    reference: Any = None  # a compat.base.ReferenceFormat, if the authors ship the family
    legacy_tags: tuple[str, ...] = ()  # tags older exports carry

    def build_subnet(self, config_data: dict, arch: Any) -> Any:
        """The static sub-network of ``arch`` for a config given as a plain dict (as an
        export's spec.json holds it); weights are not loaded."""
        config = self.config.from_dict(config_data)
        return self.subnet(config, config.space.parse(arch))


_FAMILIES: list[Family] = []


def register_family(family: Family) -> Family:
    """Make ``family`` known to :func:`family_for`; returns it."""
    if any(f.tag == family.tag for f in _FAMILIES):
        raise ValueError(f"a family tagged {family.tag!r} is already registered")
    _FAMILIES.append(family)
    return family


def all_families() -> tuple[Family, ...]:
    return tuple(_FAMILIES)


def family_for(item: Any) -> Family:
    """The family of ``item``: a supernet, sub-network, config or space of it (instance
    or class), or its export tag (current or legacy); a family is its own."""
    if isinstance(item, Family):
        return item
    for family in _FAMILIES:
        if isinstance(item, str):
            if item == family.tag or item in family.legacy_tags:
                return family
            continue
        kinds = (family.supernet, family.subnet, family.config, family.space)
        if isinstance(item, kinds) or (isinstance(item, type) and issubclass(item, kinds)):
            return family
    if isinstance(item, str):
        tags = ", ".join(f.tag for f in _FAMILIES)
        raise ConfigError(f"unknown sub-network family {item!r}; known: {tags}")
    raise ConfigError(f"{type(item).__name__} belongs to no registered model family")
