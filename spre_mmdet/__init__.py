"""spre-mmdet: N:M sparse training of MMDetection detectors.

Importing this package registers its backbones and hooks into mmdet's registries, so a config
only needs ``custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)``.
The algorithms themselves live in :mod:`spre_mmdet.sparsity` (plain PyTorch).
"""
from .version import __version__

from . import compat  # noqa: F401,E402  (fixes for current torch/mmengine, applied on import)
from .hooks import ReparameterizeHook, SparsityHook  # noqa: E402
from .models import SparseResNet  # noqa: E402

__all__ = ['__version__', 'ReparameterizeHook', 'SparseResNet', 'SparsityHook']
