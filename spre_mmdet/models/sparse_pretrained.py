"""Starting a sparse ResNet from a checkpoint of a sparse run (the two-stage pipeline).

``init_cfg=dict(type='SparsePretrained', checkpoint=PATH, prefix='backbone.')`` on a sparse
ResNet loads the backbone of a sparse checkpoint (an ImageNet stage checkpoint of this package,
or an imported reference checkpoint) with its masks, S, extra branches, both BNs and LBC state,
so that nothing is re-initialized. ``SparsePretrained`` is a weight initializer in mmengine's
``WEIGHT_INITIALIZERS`` registry (:class:`SparsePretrainedInit`), used like mmengine's
``Pretrained``. Unlike ``Pretrained``, which loads what fits and warns about the rest, it
refuses a checkpoint that does not fit the config (naming the keys and the likely cause), a
dense checkpoint (start from dense weights with ``Pretrained`` instead: the masks are then
derived from the weights), and masks of another N:M pattern.
"""
import os
from typing import Dict

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS  # the root registry: mmdet and mmpretrain
from torch import nn

from ..checkpoint import load_state_checked, state_dict_of
from ..errors import CheckpointError, CheckpointMismatchError
from ..sparsity import check_nm_tensor, sparse_layers, to_groups

#: state-dict key endings that only a sparse run's checkpoint has
_SPARSE_STATE = ('.sparsity.mask', '.sparsity.alive')


def backbone_state(checkpoint: Dict, prefix: str, source: str) -> Dict[str, torch.Tensor]:
    """The tensors under ``prefix`` in a loaded checkpoint, with the prefix removed."""
    state = state_dict_of(checkpoint)
    if not prefix:
        return state
    found = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not found:
        starts = sorted({key.split('.')[0] + '.' for key in state})[:5]
        raise CheckpointMismatchError(
            f'Checkpoint {source} has no keys starting with {prefix!r} (its keys start with '
            f'{starts}); set init_cfg.prefix to the part before the backbone\'s keys.')
    return found


def _pattern_problems(model: nn.Module):
    """Loaded masks that are not exactly their layer's N:M (a checkpoint of another pattern)."""
    for name, layer in sparse_layers(model):
        learner = layer.sparsity
        if learner.needs_init or not learner.is_final:
            continue
        n, m, mask = learner.n, learner.m, learner.mask
        check = check_nm_tensor(mask, n, m)
        if not check.ok:
            yield f'{name}: {check.explain()}'
            continue
        kept = to_groups(mask, m).sum(1)
        if learner.method != 'unstructured' and bool((kept != n).any()):
            yield (f'{name}: groups keep {int(kept.min())}..{int(kept.max())} of {m}, not '
                   f'exactly {n} (a sparser pattern, e.g. 1:{m * 2 // n if n else m})')


def load_sparse_pretrained(model: nn.Module, checkpoint: str, prefix: str = 'backbone.',
                           map_location: str = 'cpu') -> None:
    """Load the sparse backbone in ``checkpoint`` into the sparse ResNet ``model``.

    Args:
        model: the sparse ResNet (any module with the checkpoint's keys under ``prefix``).
        checkpoint: path or URL of the checkpoint.
        prefix: the part of the checkpoint's keys before the model's keys.
        map_location: where to load the tensors.

    Raises:
        CheckpointError: the checkpoint is dense, or its masks are of another N:M.
        CheckpointMismatchError: its keys or shapes do not fit the model (wrong method,
            depth or pattern for the config), naming them.
    """
    from mmengine.runner import CheckpointLoader  # safe weights-only loading (compat patch)
    if '://' not in checkpoint and not os.path.isfile(checkpoint):
        raise CheckpointError(
            f'init_cfg.checkpoint {checkpoint} does not exist. Train the classification stage '
            'first (its epoch checkpoint), import a released one with tools/import_reference.py, '
            'or point --cfg-options model.backbone.init_cfg.checkpoint=... at the file.')
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location=map_location)
    state = backbone_state(loaded, prefix, checkpoint)
    if not any(key.endswith(_SPARSE_STATE) for key in state):
        raise CheckpointError(
            f'Checkpoint {checkpoint} is dense (its backbone has no N:M masks), but '
            "init_cfg type 'SparsePretrained' starts from a sparse run's checkpoint. To start "
            "from dense weights use init_cfg=dict(type='Pretrained', checkpoint=...) (the masks "
            'are then derived from the weights); for the two-stage pipeline give the checkpoint '
            'of the sparse ImageNet (classification) stage.')
    load_state_checked(model, state, source=checkpoint)
    problems = list(_pattern_problems(model))
    if problems:
        raise CheckpointMismatchError(
            f'Checkpoint {checkpoint} holds masks of another N:M pattern than the config\'s '
            f'({len(problems)} layers, e.g. {problems[0]}). Set sparsity.n / sparsity.m to the '
            'pattern the checkpoint was trained with.')


@WEIGHT_INITIALIZERS.register_module(name='SparsePretrained')
class SparsePretrainedInit:
    """Weight initializer ``SparsePretrained``: :func:`load_sparse_pretrained` into the module
    whose ``init_cfg`` names it.

    mmengine runs its own ``Pretrained`` after the children's ``init_weights`` and every other
    initializer, this one included, before them: give it to the module whose weights it loads
    (the backbone), whose children do not initialize themselves.

    Args:
        checkpoint: path or URL of a sparse run's checkpoint.
        prefix: the part of the checkpoint's keys before the module's keys.
        map_location: where to load the tensors.
    """

    def __init__(self, checkpoint: str, prefix: str = 'backbone.', map_location: str = 'cpu'):
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.map_location = map_location

    def __call__(self, module: nn.Module) -> None:
        load_sparse_pretrained(module, self.checkpoint, self.prefix, self.map_location)
        print_log(f'{type(module).__name__}: loaded the sparse backbone of {self.checkpoint} '
                  '(masks, branches and BNs included)', logger='current')
        if hasattr(module, '_params_init_info'):  # set while a BaseModule initializes
            update_init_info(module, init_info=f'SparsePretrained: load from {self.checkpoint}')
