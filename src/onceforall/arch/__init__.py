"""Architecture values and the spaces they live in, one module per family of spaces.

- :mod:`.base`: what generic code may assume of any family (:class:`ArchValue`,
  :class:`Space`, :class:`Genome` protocols) and :class:`ArchError`.
- :mod:`.mbconv`: OFA-MobileNetV3 and OFA-ProxylessNAS (kernel size and expand ratio per
  block slot, depth per stage, resolution): :class:`MBConvArch`, :class:`MBConvSpace`.
- :mod:`.resnet`: OFA-ResNet50 (depth per stage and stem block, expand ratio per block
  slot, width-multiplier index per position, resolution): :class:`ResNetArch`,
  :class:`ResNetSpace`.
- :mod:`.genes` and each family's ``*_genes`` module: archs as rows of integer gene
  matrices, the form search works on (``space.genome()``).

Every space validates architectures (errors name the field, index and allowed values),
samples them, counts them, one-hot encodes them for the accuracy predictor, summarises
them in one line, and restricts itself to the choices a training stage opens.
"""

from .base import ArchError, ArchInput, ArchValue, Genome, Space
from .mbconv import Arch, ArchLike, MBConvArch, MBConvSpace
from .resnet import OpenResNetSpace, ResNetArch, ResNetArchLike, ResNetSpace

__all__ = [
    "Arch",
    "ArchError",
    "ArchInput",
    "ArchLike",
    "ArchValue",
    "Genome",
    "MBConvArch",
    "MBConvSpace",
    "OpenResNetSpace",
    "ResNetArch",
    "ResNetArchLike",
    "ResNetSpace",
    "Space",
]
