"""The model families (supernet, static sub-network and cost model, built from one table
per family) and the registry of named supernets.

- :mod:`.family`: :class:`Family`, the object the rest of the code asks about a family.
- :mod:`.registry`: the registered families and supernets; :func:`create_supernet`.
- :mod:`.mbconv`: OFA-MobileNetV3 and OFA-ProxylessNAS; :mod:`.resnet`: OFA-ResNet50.
- :mod:`.base`: what every supernet shares (arch handling, extraction, costs).
"""

from .base import Supernet
from .family import Family, all_families, family_for, register_family
from .mbconv import MBConvNetConfig, MBConvSubnet, OFAMBConvNet
from .registry import (
    build_subnet,
    create_supernet,
    list_supernets,
    register_supernet,
    supernet_config,
    supernet_family,
)
from .resnet import OFAResNet, ResNetConfig, ResNetSubnet

__all__ = [
    "Family",
    "MBConvNetConfig",
    "MBConvSubnet",
    "OFAMBConvNet",
    "OFAResNet",
    "ResNetConfig",
    "ResNetSubnet",
    "Supernet",
    "all_families",
    "build_subnet",
    "create_supernet",
    "family_for",
    "list_supernets",
    "register_family",
    "register_supernet",
    "supernet_config",
    "supernet_family",
]
