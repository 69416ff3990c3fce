"""Synthetic conv weights and state dicts shaped like trained SpRe checkpoints.

Used by the tests and by ``tools/analyze_sparsity.py --demo`` (no checkpoint needed).
"""
from collections import OrderedDict

import torch

from ..sparsity.nm import nm_mask
from ..sparsity.spre import spatial_mask
from .state_dict import MASK_SUFFIX, SPATIAL_SUFFIX

__all__ = ['synthetic_weight', 'synthetic_state_dict']


def synthetic_weight(out_channels: int = 32, in_channels: int = 32, kernel: int = 3,
                     centre: float = 3.0, cross: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Gaussian conv weight whose magnitudes are scaled up at the centre and on the cross.

    Such a weight mimics what trained 3x3 convs typically look like: unstructured pruning keeps
    more weights at the centre and the cross, so those positions get ``S = 1``.
    """
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_channels, in_channels, kernel, kernel, generator=gen)
    scale = torch.ones(kernel, kernel)
    mid = kernel // 2
    scale[mid, :] = cross
    scale[:, mid] = cross
    scale[mid, mid] = centre
    return weight * scale


def synthetic_state_dict(num_layers: int = 8, n: int = 2, m: int = 4, prefix: str = 'backbone.',
                         seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """A small SpRe-like backbone state dict: 3x3 convs with centre/cross-heavy weights.

    Odd layers look like SpRe training checkpoints (``spatial``, ``sparsity.mask``), even
    layers like plain dense convs; a 7x7 stem with 3 input channels and 1x1 convs are included
    as things the analysis must skip.
    """
    gen = torch.Generator().manual_seed(seed)
    state: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
    state[prefix + 'conv1.weight'] = torch.randn(16, 3, 7, 7, generator=gen)
    for k in range(num_layers):
        name = f'{prefix}layer{k // 2 + 1}.{k % 2}.conv2'
        channels = 16 * 2 ** min(k // 4, 3)
        centre, cross = 2.0 + 0.25 * k, 1.4 + 0.1 * k
        weight = synthetic_weight(channels, channels, 3, centre, cross, seed + k)
        state[name + '.weight'] = weight
        state[name.replace('conv2', 'conv1') + '.weight'] = torch.randn(channels, channels, 1, 1,
                                                                         generator=gen)
        if k % 2:
            state[name + SPATIAL_SUFFIX] = spatial_mask(weight, n, m)
            state[name + MASK_SUFFIX] = nm_mask(weight, n, m)
    return state
