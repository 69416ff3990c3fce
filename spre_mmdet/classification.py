"""The ImageNet stage: this package's sparse ResNet in mmpretrain's registry.

An mmpretrain config adds ``custom_imports = dict(imports=['spre_mmdet.classification'],
allow_failed_imports=False)`` and uses ``backbone=dict(type='NMResNet', depth=50,
sparsity=dict(...))`` with the same sparsity options as the detection backbone (mmdet's
``SparseResNet``). The name differs because mmpretrain already has a ``SparseResNet`` (for
SparK masked-image pretraining, unrelated to N:M sparsity). The hooks
(``EpochSeedHook``, ``SparsityHook``, ``ReparameterizeHook``) are registered in mmengine's root
registry, so they work in mmpretrain configs as they are; the deploy form the hook writes is a
stock mmpretrain ``ResNet`` classifier whose weights are exactly N:M.

A checkpoint of this stage (``backbone.*`` keys with masks, S, extra branches and LBC state)
is what the detection configs start from (``init_cfg=dict(type='SparsePretrained', ...)``,
see :mod:`spre_mmdet.models.sparse_pretrained`).

Kept out of ``import spre_mmdet``: mmpretrain (and the torchvision it imports) loads only for
classification configs.
"""
from typing import Optional

from mmpretrain.models.backbones import ResNet, ResNet_CIFAR
from mmpretrain.models.backbones.resnet import BasicBlock
from mmpretrain.registry import MODELS

import spre_mmdet  # noqa: F401  (the hooks, the safe checkpoint loading and the core)
from .errors import ConfigError
from .models.sparse_pretrained import SparsePretrainedInit
from .models.sparse_resnet import SparseResNetMixin

#: mmpretrain's ResNet depths plus ResNet-10 (one BasicBlock per stage), small enough for the
#: synthetic classification sweep on CPU
ARCH_SETTINGS = {**ResNet.arch_settings, 10: (BasicBlock, (1, 1, 1, 1))}


class _ClassificationSparsity(SparseResNetMixin):

    arch_settings = ARCH_SETTINGS

    def __init__(self, *args, sparsity: Optional[dict] = None, **kwargs):
        if kwargs.get('drop_path_rate'):
            raise ConfigError(f'{type(self).__name__} does not support drop_path_rate '
                              '(stochastic depth around sparse blocks is untested); set it to 0.')
        super().__init__(*args, **kwargs)
        self._setup_sparsity(sparsity)

    def init_weights(self):
        """As :meth:`SparseResNetMixin.init_weights`. mmpretrain's ResNet zeroes the last BN of
        every block (``zero_init_residual``) after any ``init_cfg`` but ``Pretrained``; a
        ``SparsePretrained`` backbone is loaded too, so its BNs are kept the same way."""
        if not _loads_sparse_pretrained(self.init_cfg):
            return super().init_weights()
        zero_init_residual, self.zero_init_residual = self.zero_init_residual, False
        try:
            return super().init_weights()
        finally:
            self.zero_init_residual = zero_init_residual


def _loads_sparse_pretrained(init_cfg) -> bool:
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(cfg, dict) and cfg.get('type') in ('SparsePretrained',
                                                             SparsePretrainedInit)
               for cfg in cfgs)


@MODELS.register_module()
class NMResNet(_ClassificationSparsity, ResNet):
    """mmpretrain ``ResNet`` (ImageNet stem) whose layer1-4 convs are N:M sparse: see
    :class:`~spre_mmdet.models.sparse_resnet.SparseResNetMixin`. Depths 10, 18, 34, 50, 101,
    152.

    Args:
        sparsity (dict): as for the detection ``SparseResNet``.
        All other arguments are those of :class:`mmpretrain.models.backbones.ResNet`.
    """


@MODELS.register_module()
class NMResNet_CIFAR(_ClassificationSparsity, ResNet_CIFAR):
    """mmpretrain ``ResNet_CIFAR`` (3x3 stem, no max-pool: for 32x32 images) whose layer1-4
    convs are N:M sparse; see :class:`NMResNet`."""


__all__ = ['NMResNet', 'NMResNet_CIFAR']
