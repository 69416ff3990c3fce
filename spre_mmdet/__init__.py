"""spre-mmdet: N:M sparse training of MMDetection detectors.

Importing this package registers its backbones and hooks into mmdet's registries, so a config
only needs ``custom_imports = dict(imports=['spre_mmdet'], allow_failed_imports=False)``.
The algorithms themselves live in :mod:`spre_mmdet.sparsity` (plain PyTorch), which also
imports where mmdet is not installed.
"""
from .version import __version__

__all__ = ['__version__']

try:
    import mmdet  # noqa: F401
except ImportError:  # plain-PyTorch use of spre_mmdet.sparsity
    pass
else:
    from . import compat  # noqa: F401  (fixes for current torch/mmengine, applied on import)
    from .hooks import ReparameterizeHook, SparsityHook  # noqa: F401
    from .models import SparseResNet  # noqa: F401
    __all__ += ['ReparameterizeHook', 'SparseResNet', 'SparsityHook']
