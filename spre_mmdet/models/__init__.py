from .sparse_resnet import DEFAULT_SPARSITY, SparseResNet

__all__ = ['DEFAULT_SPARSITY', 'SparseResNet']
