"""Loading a state dict into a model only when they fit, and saying why when they do not.

PyTorch's non-strict loading silently keeps the model's own initialization for every key the
checkpoint lacks. For a sparse model that means a silently wrong model: an SR-STE config given a
SpRe checkpoint drops the extra branch, a checkpoint of another depth leaves whole blocks random.
:func:`load_state_checked` loads only when every key and shape fits (the masks that a dense
checkpoint cannot have are derived from its weights, which is not a mismatch) and otherwise
raises :class:`~spre_mmdet.errors.CheckpointMismatchError` naming the keys and the likely cause.

Plain PyTorch: no mmengine imports.
"""
import re
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import CheckpointError, CheckpointMismatchError

#: state-dict key fragments that identify a training-time structure, and how a config asks for it
STRUCTURE_KEYS: Tuple[Tuple[str, str], ...] = (
    ('.weight_rep', "SpRe's extra branch (sparsity.spre)"),
    ('.rep_bn.', "SpRe's extra branch (sparsity.spre)"),
    ('.spatial', "SpRe's spatial mask S (sparsity.spre)"),
    ('.sparsity.scores', "LBC's subset scores (learner type 'lbc')"),
    ('.sparsity.alive', "LBC's subset scores (learner type 'lbc')"),
    ('.basis', 'interspace convs (sparsity.interspace)'),
    ('.sparsity.mask', 'N:M masks (a sparse model)'),
)

#: ResNet blocks per stage -> depth (34 and 50 share a layout; conv3 tells them apart)
RESNET_DEPTHS = {(2, 2, 2, 2): '18', (3, 4, 6, 3): '34/50', (3, 4, 23, 3): '101',
                 (3, 8, 36, 3): '152'}
_BLOCK_KEY = re.compile(r'(?:^|\.)layer([1-9])\.(\d+)\.')
_MAX_LISTED = 6


def structures(keys: Sequence[str]) -> List[str]:
    """The training-time structures (:data:`STRUCTURE_KEYS`) that ``keys`` carry."""
    found = [name for fragment, name in STRUCTURE_KEYS if any(fragment in k for k in keys)]
    return list(dict.fromkeys(found))


def resnet_layout(keys: Sequence[str]) -> Optional[Tuple[Tuple[int, ...], bool]]:
    """``(blocks per stage, has conv3)`` of the ResNet whose state-dict ``keys`` these are, or
    ``None`` if they hold no ResNet stages."""
    blocks: Dict[int, int] = defaultdict(int)
    for key in keys:
        match = _BLOCK_KEY.search(key)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks[stage], index + 1)
    if not blocks:
        return None
    bottleneck = any(re.search(r'layer\d\.\d+\.conv3\.', k) for k in keys)
    return tuple(blocks[s] for s in sorted(blocks)), bottleneck


def _depth_name(layout: Tuple[Tuple[int, ...], bool]) -> str:
    blocks, bottleneck = layout
    depth = RESNET_DEPTHS.get(blocks)
    if depth == '34/50':
        depth = '50' if bottleneck else '34'
    return f'ResNet-{depth}' if depth else f'a ResNet with {blocks} blocks per stage'


def mismatch_causes(model_keys: Sequence[str], checkpoint_keys: Sequence[str],
                    missing: Sequence[str], unexpected: Sequence[str]) -> List[str]:
    """Likely causes of a key mismatch, each with its fix, most specific first."""
    causes = []
    if 'N:M masks (a sparse model)' in structures(model_keys) and \
            'N:M masks (a sparse model)' not in structures(checkpoint_keys) and \
            not structures(checkpoint_keys):
        causes.append('the checkpoint is dense (it holds no N:M masks or sparse branches): start '
                      'from it with a dense-start config, or give a checkpoint of a sparse run')
    model_layout, ckpt_layout = resnet_layout(model_keys), resnet_layout(checkpoint_keys)
    if model_layout and ckpt_layout and model_layout != ckpt_layout:
        causes.append(f'the checkpoint is a {_depth_name(ckpt_layout)} but the config builds a '
                      f'{_depth_name(model_layout)}: use a config of the checkpoint\'s depth')
    for name in structures(unexpected):
        if name not in structures(model_keys):
            causes.append(f'the checkpoint has {name} but the config does not: use the config '
                          'the checkpoint was trained with')
    for name in structures(missing):
        if name not in structures(checkpoint_keys):
            causes.append(f'the config has {name} but the checkpoint does not: use the config '
                          'the checkpoint was trained with, or a checkpoint of this config')
    return list(dict.fromkeys(causes))


def _listed(keys: Sequence[str]) -> str:
    shown = ', '.join(keys[:_MAX_LISTED])
    return shown + (f' (and {len(keys) - _MAX_LISTED} more)' if len(keys) > _MAX_LISTED else '')


def mismatch_error(source: str, model_keys: Sequence[str], checkpoint_keys: Sequence[str],
                   missing: Sequence[str], unexpected: Sequence[str],
                   shapes: Sequence[str]) -> CheckpointMismatchError:
    """The error for a checkpoint that does not fit: what differs, and the likely fix."""
    parts = []
    if missing:
        parts.append(f'{len(missing)} keys of the model are not in the checkpoint: '
                     f'{_listed(missing)}')
    if unexpected:
        parts.append(f'{len(unexpected)} keys of the checkpoint are not in the model: '
                     f'{_listed(unexpected)}')
    if shapes:
        parts.append(f'{len(shapes)} tensors differ in shape: {_listed(shapes)}')
    causes = mismatch_causes(model_keys, checkpoint_keys, missing, unexpected)
    advice = ('Likely cause: ' + '; '.join(causes) + '.') if causes else (
        'Check that the config is the one the checkpoint was trained with (method, N:M, depth).')
    return CheckpointMismatchError(
        f'Checkpoint {source} does not match the model built from the config, so it was not '
        'loaded (a partial load would silently keep random weights):\n  ' +
        '\n  '.join(parts) + f'\n{advice}')


def _shape_errors(model: nn.Module, state: Mapping[str, torch.Tensor]) -> List[str]:
    """Checkpoint tensors whose shape does not fit the model's (a layer may accept a reshaped
    tensor on purpose, e.g. an interspace conv a dense 4-D weight: same number of elements)."""
    own = model.state_dict()
    return [f'{key}: checkpoint {tuple(value.shape)}, model {tuple(own[key].shape)}'
            for key, value in state.items()
            if key in own and isinstance(value, torch.Tensor)
            and value.numel() != own[key].numel()]


def load_state_checked(model: nn.Module, state: Mapping[str, torch.Tensor],
                       source: str = 'checkpoint') -> None:
    """Load ``state`` into ``model`` if every key and shape fits, else raise.

    Derived state that a checkpoint may lack on purpose (the masks of a dense checkpoint, which
    are then derived from its weights) is not a mismatch. ``num_batches_tracked`` is not either
    (old BN checkpoints lack it).

    Raises:
        CheckpointMismatchError: naming the missing, unexpected and mis-shaped keys and the
            likely cause (another method's or depth's config). The model may then hold part
            of the checkpoint: do not use it.
    """
    shapes = _shape_errors(model, state)
    missing: List[str] = []
    unexpected: List[str] = []
    if not shapes:
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a layer refused a tensor: report it as a shape problem
            shapes = [str(e).strip().splitlines()[-1].strip()]
        else:
            missing = [k for k in result.missing_keys if not k.endswith('num_batches_tracked')]
            unexpected = list(result.unexpected_keys)
    if missing or unexpected or shapes:
        raise mismatch_error(source, list(model.state_dict()), list(state), missing,
                             unexpected, shapes)


#: where a checkpoint keeps the model's state dict: mmengine's (and most others') ``state_dict``;
#: ``model`` and ``module`` in some other frameworks' training checkpoints
STATE_DICT_KEYS = ('state_dict', 'model', 'module')


def _holds_tensors(value) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, torch.Tensor) for v in value.values())


def state_dict_of(checkpoint, source: str = 'The checkpoint') -> Dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint: the one place every loader, importer and
    analysis of this package takes it from.

    Args:
        checkpoint: what ``torch.load`` returned: a training checkpoint (the state dict under
            one of :data:`STATE_DICT_KEYS`, next to ``meta``, ``optimizer``, ...) or a bare
            ``{name: tensor}`` state dict.
        source: how error messages name the checkpoint (e.g. its path).

    Returns:
        Its tensors (non-tensor entries dropped), without the ``module.`` prefix that
        DataParallel / DistributedDataParallel put on every key.

    Raises:
        CheckpointError: if no ``{name: tensor}`` dict is found; the message names what was.
    """
    state = next((checkpoint[key] for key in STATE_DICT_KEYS
                  if isinstance(checkpoint, Mapping) and _holds_tensors(checkpoint.get(key))),
                 checkpoint)
    if not _holds_tensors(state):
        found = (f'a dict with the keys {sorted(map(str, checkpoint))[:8]}'
                 if isinstance(checkpoint, Mapping) else f'a {type(checkpoint).__name__}')
        raise CheckpointError(
            f'{source} holds no state dict: expected a training checkpoint (a dict with '
            f"'state_dict') or a bare {{name: tensor}} state dict, found {found}.")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    return tensors


def load_checkpoint_checked(model: nn.Module, path: str,
                            map_location: str = 'cpu') -> Dict:
    """Load the checkpoint file ``path`` safely and into ``model`` only if it fits
    (:func:`load_state_checked`). Returns the whole checkpoint (``meta`` etc.)."""
    from .safe_load import safe_torch_load
    checkpoint = safe_torch_load(path, map_location=map_location)
    load_state_checked(model, state_dict_of(checkpoint, f'Checkpoint {path}'), source=path)
    return checkpoint
