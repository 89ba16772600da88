"""onceforall: train one Once-for-All supernet, specialise it per device without retraining.

>>> import onceforall
>>> net = onceforall.create_supernet("ofa_mbv3_w1.0", num_classes=10)
>>> arch = net.space.sample(0)        # seeded random sub-network
>>> net.set_active(arch)            # forward now runs that sub-network
>>> subnet = net.extract(arch)      # an ordinary nn.Module with copied weights
>>> net.macs(arch), net.params(arch)
"""

from .arch import Arch, ArchError, MBConvSpace
from .models import (
    Supernet,
    build_subnet,
    create_supernet,
    list_supernets,
    register_supernet,
    supernet_config,
)

__all__ = [
    "Arch",
    "ArchError",
    "MBConvSpace",
    "Supernet",
    "build_subnet",
    "create_supernet",
    "list_supernets",
    "register_supernet",
    "supernet_config",
]

__version__ = "0.1.0"
