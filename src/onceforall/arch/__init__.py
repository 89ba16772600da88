"""Architecture values and the spaces they live in, one module per family of spaces.

- :mod:`.mbconv`: OFA-MobileNetV3 and OFA-ProxylessNAS (kernel size and expand ratio per
  block slot, depth per stage, resolution): :class:`Arch`, :class:`MBConvSpace`.

Every space validates architectures (errors name the field, index and allowed values),
samples them, counts them and one-hot encodes them for the accuracy predictor.
"""

from .mbconv import Arch, ArchError, ArchLike, MBConvSpace

__all__ = ["Arch", "ArchError", "ArchLike", "MBConvSpace"]
