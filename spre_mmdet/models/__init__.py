from .nm_layers import NMConv2d, NMShared2FCBBoxHead
from .sparse_pretrained import SparsePretrainedInit, load_sparse_pretrained
from .sparse_resnet import DEFAULT_SPARSITY, SparseResNet

__all__ = ['DEFAULT_SPARSITY', 'NMConv2d', 'NMShared2FCBBoxHead', 'SparsePretrainedInit',
           'SparseResNet', 'load_sparse_pretrained']
