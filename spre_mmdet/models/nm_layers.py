"""N:M sparsity for the neck and heads, by config (dense by default: docs/configs.md).

* ``conv_cfg=dict(type='NMConv2d', n=2, m=4, learner=dict(type='SRSTEMask'))`` makes the convs of any
  mmcv ``ConvModule`` user N:M sparse: FPN (lateral and output convs), the Mask R-CNN mask head,
  conv bbox heads.
* ``bbox_head=dict(type='NMShared2FCBBoxHead', sparsity=dict(n=2, m=4, ...))`` makes the RoI
  head's shared FCs N:M sparse (among the shapes where sparse tensor cores pay off).

Both are exported as their stock mmdet counterparts (``spre_mmdet.deploy.deploy_config``).
"""
import copy

from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
from mmdet.registry import MODELS
from mmengine.logging import print_log
from torch import nn

from ..sparsity import sparsify_layer

DEFAULT_LEARNER = dict(type='SRSTEMask')


def _make_sparse(parent: nn.Module, name: str, n: int, m: int, learner: dict) -> None:
    learner = copy.deepcopy(learner)
    method = learner.pop('type')
    reason = sparsify_layer(parent, name, method, n, m, **learner)
    if reason:
        print_log(f'{type(parent).__name__}.{name} stays dense: {reason}', logger='current')


class _Holder(nn.Module):
    """A parent for one layer, so that the layer can be swapped in place."""


@MODELS.register_module()
def NMConv2d(*args, n: int = 2, m: int = 4, learner: dict = DEFAULT_LEARNER,
             **kwargs) -> nn.Module:
    """``nn.Conv2d(*args, **kwargs)`` made N:M sparse (a plain conv if it cannot be N:M)."""
    holder = _Holder()
    holder.conv = nn.Conv2d(*args, **kwargs)
    _make_sparse(holder, 'conv', n, m, learner)
    return holder.conv


@MODELS.register_module()
class NMShared2FCBBoxHead(Shared2FCBBoxHead):
    """``Shared2FCBBoxHead`` whose shared FCs are N:M sparse.

    Args:
        sparsity (dict): ``n``, ``m`` and ``learner`` (as for ``SparseResNet``).
    """

    def __init__(self, *args, sparsity: dict = None, **kwargs):
        super().__init__(*args, **kwargs)
        sparsity = dict(dict(n=2, m=4, learner=DEFAULT_LEARNER), **(sparsity or {}))
        for index in range(len(self.shared_fcs)):
            _make_sparse(self.shared_fcs, str(index), sparsity['n'], sparsity['m'],
                         sparsity['learner'])
