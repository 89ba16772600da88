"""Architecture values and the spaces they live in, one module per family of spaces.

- :mod:`.mbconv`: OFA-MobileNetV3 and OFA-ProxylessNAS (kernel size and expand ratio per
  block slot, depth per stage, resolution): :class:`Arch`, :class:`MBConvSpace`.
- :mod:`.resnet`: OFA-ResNet50 (depth per stage and stem block, expand ratio per block
  slot, width-multiplier index per position, resolution): :class:`ResNetArch`,
  :class:`ResNetSpace`.

Every space validates architectures (errors name the field, index and allowed values),
samples them, counts them and one-hot encodes them for the accuracy predictor.
"""

from .mbconv import Arch, ArchError, ArchLike, MBConvSpace
from .resnet import ResNetArch, ResNetArchLike, ResNetSpace

__all__ = [
    "Arch",
    "ArchError",
    "ArchLike",
    "MBConvSpace",
    "ResNetArch",
    "ResNetArchLike",
    "ResNetSpace",
]
