from .nm_layers import NMConv2d, NMShared2FCBBoxHead
from .sparse_resnet import DEFAULT_SPARSITY, SparseResNet

__all__ = ['DEFAULT_SPARSITY', 'NMConv2d', 'NMShared2FCBBoxHead', 'SparseResNet']
