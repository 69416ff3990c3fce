"""Walk a model: make layers sparse, drive their masks, report, and re-parameterize for deploy.

Each sparse module knows how to become its deploy form (``to_deploy``; a SpRe conv-BN pair
through ``SpReBatchNorm2d.fold``); the functions here only walk the model.
"""
import copy
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError, ExportError, NotFinalError
from .interspace import INTERSPACE_OPTIONS, InterspaceDeployConv2d
from .layers import SparseConv2d, SparseLayerMixin, SparseLinear
from .learners import DerivedStateMixin, check_options, learner_options
from .nm import check_nm, check_nm_tensor, nm_incompatibility
from .spre import SPRE_OPTIONS, SpReBatchNorm2d, SpReConv2d


def sparse_layers(model: nn.Module) -> Iterator[Tuple[str, SparseLayerMixin]]:
    """``(name, layer)`` for every sparse layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SparseLayerMixin):
            yield name, module


@torch.no_grad()
def refresh_masks(model: nn.Module, iteration: int) -> None:
    """Advance every sparse layer's mask schedule to ``iteration`` (call once per iteration,
    before the forward pass)."""
    for _, layer in sparse_layers(model):
        layer.refresh(iteration)


@torch.no_grad()
def initialize_masks(model: nn.Module) -> None:
    """Derive every mask from the current weights (e.g. right after loading pretrained ones)."""
    for _, layer in sparse_layers(model):
        for module in layer.modules():
            if isinstance(module, DerivedStateMixin):
                module.needs_init = True
        layer.refresh(0)


def check_sparsity_options(method: str, learner_kwargs: dict, spre: Optional[dict] = None,
                           interspace: Optional[dict] = None) -> None:
    """Check each section of a sparsity config against its own options, so that a misplaced
    key is named where it was written (e.g. ``spre=dict(interval=50)``) instead of being passed
    on to another part or blamed on the learner.

    Raises:
        ConfigError: naming the section, the unknown keys and the valid ones.
    """
    check_options(f'learner ({method!r})', learner_kwargs, learner_options(method))
    if spre is not None:
        check_options('spre', spre, SPRE_OPTIONS)
    if interspace is not None:
        pruning = interspace.get('pruning', 'nm')
        if pruning not in INTERSPACE_OPTIONS:
            raise ConfigError(f'Unknown interspace pruning {pruning!r}; choose one of '
                              f'{sorted(INTERSPACE_OPTIONS)}.')
        check_options(f'interspace (pruning={pruning!r})', interspace,
                      INTERSPACE_OPTIONS[pruning])


def spre_pairs(model: nn.Module) -> Iterator[Tuple[str, SpReConv2d, SpReBatchNorm2d]]:
    """``(conv name, conv, norm)`` of every SpRe block of ``model``."""
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, SpReBatchNorm2d):
                conv_name = f'{parent_name}.{child.conv_name}' if parent_name else child.conv_name
                yield conv_name, getattr(parent, child.conv_name), child


def sparsify_layer(parent: nn.Module, name: str, method: str, n: int, m: int,
                   norm_name: Optional[str] = None, rep_gamma: float = 0.0,
                   spatial_interval: int = 1, **learner_kwargs) -> Optional[str]:
    """Replace ``parent.<name>`` (a Conv2d or Linear) by its sparse version, in place.

    With ``norm_name`` (the BN right after a k x k conv) the pair becomes a SpRe block.

    Returns:
        ``None`` if the layer was made sparse, else why it cannot be N:M (it stays dense).
    """
    check_nm(n, m)
    layer = getattr(parent, name)
    if type(layer) not in (nn.Conv2d, nn.Linear):
        raise TypeError(f'{name}: only plain nn.Conv2d / nn.Linear can be made sparse, got '
                        f'{type(layer).__name__}.')
    reason = nm_incompatibility(layer.weight.shape, m)
    if reason is None and isinstance(layer, nn.Conv2d) and layer.groups != 1:
        reason = f'grouped conv (groups={layer.groups})'
    if reason is not None:
        return reason
    if norm_name is not None:
        norm = getattr(parent, norm_name)
        if type(norm) is not nn.BatchNorm2d:
            raise TypeError(f'SpRe needs {name} followed by nn.BatchNorm2d, got {norm}.')
        conv = SpReConv2d.from_dense(layer, method, n, m, spatial_interval, **learner_kwargs)
        norm = SpReBatchNorm2d.from_dense(norm, name, rep_gamma)
        conv.pair(norm)
        setattr(parent, name, conv)
        setattr(parent, norm_name, norm)
    elif isinstance(layer, nn.Conv2d):
        setattr(parent, name, SparseConv2d.from_dense(layer, method, n, m, **learner_kwargs))
    else:
        setattr(parent, name, SparseLinear.from_dense(layer, method, n, m, **learner_kwargs))
    return None


@torch.no_grad()
def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The deploy model: every sparse layer replaced by a plain layer with exactly N:M weights,
    every SpRe pair folded into one conv + BN. The result imports nothing from this package.

    Raises:
        NotFinalError: if a layer's mask is not final (its learner says how to proceed).
        ExportError: if the model has no sparse layer at all (not from a sparse run).
    """
    layers = list(sparse_layers(model))
    if not layers:
        raise ExportError('This model has no sparse layers: it is not from a sparse run, so '
                         'there is nothing to re-parameterize. Train with a sparse config '
                         '(e.g. configs/mask_rcnn_r50_spre_2x4.py) first.')
    not_final = [(name, layer) for name, layer in layers if not layer.sparsity.is_final]
    if not_final:
        raise NotFinalError(
            f'{len(not_final)} layers are not exactly N:M yet (e.g. {not_final[0][0]}: '
            f'{not_final[0][1].sparsity.method} has not finished its schedule). Export after the '
            'schedule ends, or finish the masks by magnitude explicitly (--finish-by-magnitude).')
    if not inplace:
        model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SpReBatchNorm2d):
                conv, bn = child.fold(getattr(parent, child.conv_name))
                setattr(parent, child.conv_name, conv)
                setattr(parent, name, bn)
        for name, child in list(parent.named_children()):
            if isinstance(child, SparseLayerMixin):
                setattr(parent, name, child.to_deploy())
    return model


@dataclass
class LayerReport:
    """One row of the sparsity report."""

    name: str
    kind: str
    shape: Tuple[int, ...]
    density: float
    status: str
    valid: bool


#: marks, in ``sparsity_report(trained=...)``, a layer deployed merged into a dense conv on
#: purpose (an interspace conv for hardware without sparse support)
MERGED = ' merged'


def sparse_kinds(model: nn.Module) -> Dict[str, str]:
    """``{name: method}`` of every sparse layer (e.g. ``'srste+spre'``): what the report of the
    deployed model calls the plain layers they became."""
    return {name: layer.sparsity.method + layer.report_suffix
            for name, layer in sparse_layers(model)}


def sparsity_report(model: nn.Module, n: int, m: int,
                    trained: Optional[Dict[str, str]] = None) -> List[LayerReport]:
    """Every conv/linear of ``model``: how it is sparsified and whether its (deploy) weight is
    exactly N:M, or why not.

    Args:
        model: a training-time model (sparse layers) or its deploy form.
        n, m: the pattern to check.
        trained: for a deploy model, :func:`sparse_kinds` of the training-time model, so the
            plain layers that were sparse are reported under their method, not as dense. An
            interspace deploy module is one row: its 1x1 GEMM weight is what must be N:M.
            A kind ending in :data:`MERGED` is a layer deployed dense on purpose.
    """
    trained = trained or {}
    rows, deploy_prefix = [], None  # the submodules of a deploy module are not rows
    for name, module in model.named_modules():
        if deploy_prefix is not None and name.startswith(deploy_prefix):
            continue
        if isinstance(module, InterspaceDeployConv2d):
            deploy_prefix = name + '.' if name else ''
            weight = module.gemm.weight.detach()
            kind = trained.get(name, 'ip') + ' basis+1x1'
        elif not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        elif isinstance(module, SparseLayerMixin):
            weight = module.deploy_weight() if module.sparsity.is_final else \
                module.weight * module.sparsity.mask
            kind = module.sparsity.method + module.report_suffix
        else:
            weight, kind = module.weight.detach(), trained.get(name, 'dense')
        check = check_nm_tensor(weight, n, m)
        status = check.explain()
        if kind.endswith(MERGED) and not check.ok:
            status = (f'merged into a dense conv, not {n}:{m} by design '
                      f'({check.num_violations}/{check.num_groups} groups over {n})')
        elif kind == 'dense':
            status = f'dense: {check.reason}' if check.reason else 'dense (not selected)'
        rows.append(LayerReport(name, kind, tuple(weight.shape),
                                float((weight != 0).float().mean()), status, check.ok))
    return rows


def format_report(rows: List[LayerReport]) -> str:
    """The report as an aligned text table."""
    header = ('layer', 'method', 'shape', 'density', 'N:M')
    lines = [(r.name, r.kind, 'x'.join(map(str, r.shape)), f'{r.density:.3f}', r.status)
             for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)] if lines else []
    fmt = '  '.join('{:<%d}' % w for w in widths[:-1]) + '  {}'
    return '\n'.join(fmt.format(*row) for row in [header, *lines])
