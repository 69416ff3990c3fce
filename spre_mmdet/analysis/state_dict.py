"""Find the ``k x k`` convs of a state dict and analyse them, no model built (the state dict of a
checkpoint file is :func:`spre_mmdet.checkpoint.state_dict_of`).

A sparse layer's extra tensors are found by the names its class registers them under
(``<conv>.sparsity.mask``, ``<conv>.spatial``), so the analysis reads a
training checkpoint's own ``B`` and ``S`` when it has them.
"""
from typing import Dict, Iterable, List, Mapping, Tuple

import torch

from ..sparsity.layers import SparseLayerMixin
from ..sparsity.learners import MaskLearner
from ..sparsity.nm import check_nm, nm_incompatibility
from ..sparsity.spre import SpReConv2d
from .positions import AnalysisError, LayerAnalysis, SkippedLayer, analyze_layer

__all__ = [
    'MASK_SUFFIX', 'SPATIAL_SUFFIX', 'find_kxk_convs', 'suggest_prefixes', 'analyze_state_dict'
]


#: State-dict key suffixes, after a conv's name, of its learner's N:M mask ``B`` and of SpRe's
#: spatial mask ``S``: the names the layer classes register them under.
MASK_SUFFIX = f'.{SparseLayerMixin.LEARNER}.{MaskLearner.MASK}'
SPATIAL_SUFFIX = f'.{SpReConv2d.SPATIAL}'


def _is_kxk(tensor) -> bool:
    return (isinstance(tensor, torch.Tensor) and tensor.dim() == 4
            and tensor.shape[2] * tensor.shape[3] > 1)


def find_kxk_convs(state_dict: Mapping[str, torch.Tensor], prefix: str = '') -> List[str]:
    """Names (without ``.weight``) of the ``k x k`` conv weights (``k > 1``) under ``prefix``."""
    return [key[:-len('.weight')] for key, value in state_dict.items()
            if key.startswith(prefix) and key.endswith('.weight') and _is_kxk(value)]


def suggest_prefixes(state_dict: Mapping[str, torch.Tensor], max_items: int = 5) -> List[str]:
    """Top-level prefixes (``'backbone.'``, ...) that hold ``k x k`` convs, most first."""
    counts: Dict[str, int] = {}
    for name in find_kxk_convs(state_dict, ''):
        head = name.split('.', 1)[0] + '.' if '.' in name else ''
        counts[head] = counts.get(head, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return [f'{p!r} ({c} conv{"s" if c != 1 else ""})' for p, c in ranked[:max_items]]


def analyze_state_dict(state_dict: Mapping[str, torch.Tensor], n: int = 2, m: int = 4,
                       prefix: str = 'backbone.', progress: bool = False
                       ) -> Tuple[List[LayerAnalysis], List[SkippedLayer]]:
    """Analyse every ``k x k`` conv under ``prefix``; returns ``(analysed, skipped)``.

    Layers that cannot be N:M (e.g. a 7x7 stem with 3 input channels) are skipped with a reason.

    Raises:
        AnalysisError: if there is no ``k x k`` conv under ``prefix`` (the message suggests one).
    """
    n, m = check_nm(n, m)
    names = find_kxk_convs(state_dict, prefix)
    if not names:
        hints = suggest_prefixes(state_dict)
        hint = (' k x k convs were found under ' + ', '.join(hints) + '; pass one with --prefix'
                ' (or --prefix "" for the whole model).') if hints else (
            ' The checkpoint has no 4-D conv weight with a kernel larger than 1x1 at all.')
        raise AnalysisError(f'No k x k conv weights (k > 1) under prefix {prefix!r}.' + hint)
    iterator: Iterable[str] = names
    if progress:
        try:
            from tqdm import tqdm
            iterator = tqdm(names, desc='layers', unit='layer', leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    analysed, skipped = [], []
    for name in iterator:
        weight = state_dict[name + '.weight']
        reason = nm_incompatibility(weight.shape, m)
        if reason is not None:
            skipped.append(SkippedLayer(name, tuple(weight.shape), f'not N:M-able: {reason}'))
            continue
        analysed.append(analyze_layer(
            name, weight, n, m, mask=state_dict.get(name + MASK_SUFFIX),
            spatial=state_dict.get(name + SPATIAL_SUFFIX)))
    return analysed, skipped
