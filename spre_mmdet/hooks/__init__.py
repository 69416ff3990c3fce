from .reparameterize_hook import ReparameterizeHook
from .sparsity_hook import SparsityHook

__all__ = ['ReparameterizeHook', 'SparsityHook']
