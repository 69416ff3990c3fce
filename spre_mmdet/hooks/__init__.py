from .epoch_seed_hook import EpochSeedHook, epoch_seed
from .reparameterize_hook import ReparameterizeHook
from .sparsity_hook import SparsityHook

__all__ = ['EpochSeedHook', 'ReparameterizeHook', 'SparsityHook', 'epoch_seed']
