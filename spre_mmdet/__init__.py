"""spre-mmdet: N:M sparse training of MMDetection detectors.

Importing this package registers its backbones and hooks into mmdet's registries, so a config
only needs ``custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)``.
"""
from .version import __version__

from . import compat  # noqa: F401,E402  (fixes for current torch/mmengine, applied on import)

__all__ = ['__version__']
