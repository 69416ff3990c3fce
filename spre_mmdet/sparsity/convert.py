"""Walk a model: make layers sparse, drive their masks, report, and re-parameterize for deploy.

Each sparse module knows how to become its deploy form (``to_deploy``; a SpRe conv-BN pair
through ``SpReBatchNorm2d.fold``); the functions here only walk the model.
"""
import copy
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError, ExportError, NotFinalError
from .interspace import (INTERSPACE_OPTIONS, InterspaceConv2d, InterspaceDeployConv2d,
                         interspace_incompatibility)
from .layers import SparseConv2d, SparseLayerMixin, SparseLinear
from .learners import DerivedStateMixin, check_options, learner_options
from .nm import check_nm, check_nm_tensor, nm_incompatibility
from .record import SparseLayerRecord
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
                   norm_name: Optional[str] = None, interspace: Optional[dict] = None,
                   rep_gamma: float = 0.0, spatial_interval: int = 1,
                   **learner_kwargs) -> Optional[str]:
    """Replace ``parent.<name>`` (a Conv2d or Linear) by its sparse version, in place: the one
    conversion of every structure, each layer built with the one learner factory.

    Args:
        parent, name: where the layer is.
        method: its mask learner (``'srste'``, ``'asp'``, ``'lbc'``, ``'unstructured'``).
        n, m: the pattern.
        norm_name: the BN right after a k x k conv: the pair becomes a SpRe block
            (``rep_gamma``, ``spatial_interval``).
        interspace: ``dict(pruning='nm'|'unstructured', ...)``: the k x k conv becomes an
            interspace (filter-basis) conv with pruned coefficients.
        **learner_kwargs: options of the learner.

    Returns:
        ``None`` if the layer was made sparse, else why it cannot be (it stays as it was).
    """
    check_nm(n, m)
    layer = getattr(parent, name)
    if type(layer) not in (nn.Conv2d, nn.Linear):
        raise TypeError(f'{name}: only plain nn.Conv2d / nn.Linear can be made sparse, got '
                        f'{type(layer).__name__}.')
    if interspace is not None:
        options = dict(interspace)
        pruning = options.pop('pruning', 'nm')
        reason = interspace_incompatibility(layer, m, pruning)
        if reason is None:
            setattr(parent, name, InterspaceConv2d.from_dense(
                layer, method, n, m, pruning, **options, **learner_kwargs))
        return reason
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


def sparsify_residual_block(block: nn.Module, conv_norm_pairs: Iterable[Tuple[str, str]],
                            method: str, n: int, m: int, spre: Optional[dict] = None,
                            interspace: Optional[dict] = None, prefix: str = '',
                            **learner_kwargs) -> Dict[str, str]:
    """Make a ResNet block's convs N:M sparse, in place, with :func:`sparsify_layer`: each
    ``(conv, norm)`` of ``conv_norm_pairs`` and the convs of ``block.downsample``.

    A k x k conv becomes an interspace conv if ``interspace`` is given and it can be one,
    otherwise a SpRe block with its norm if ``spre`` (``rep_gamma``, ``spatial_interval``) is
    given, otherwise a plain sparse conv; 1x1 and downsample convs are always plain. The ResNet
    backbone (mmdet's) and the torchvision ResNet of the benchmarks walk their blocks through
    this one function, so both get the same structure.

    Returns:
        ``{'<prefix>.<conv>': reason}`` of the convs that stayed dense.
    """
    dense = {}
    for conv_name, norm_name in conv_norm_pairs:
        spatial = getattr(block, conv_name).kernel_size != (1, 1)
        if interspace is not None and spatial and not sparsify_layer(
                block, conv_name, method, n, m, interspace=interspace, **learner_kwargs):
            continue
        use_spre = spre is not None and spatial
        reason = sparsify_layer(block, conv_name, method, n, m,
                                norm_name=norm_name if use_spre else None,
                                **(spre if use_spre else {}), **learner_kwargs)
        if reason:
            dense[f'{prefix}.{conv_name}'] = reason
    downsample = getattr(block, 'downsample', None)
    if downsample is not None:
        for name, module in downsample.named_children():
            # any conv (not the pooling or the norm): one that is not a plain nn.Conv2d is
            # refused by sparsify_layer, not left dense unreported
            if hasattr(module, 'kernel_size') and hasattr(module, 'weight'):
                reason = sparsify_layer(downsample, name, method, n, m, **learner_kwargs)
                if reason:
                    dense[f'{prefix}.downsample.{name}'] = reason
    return dense


@torch.no_grad()
def reparameterize(model: nn.Module, inplace: bool = False,
                   interspace_form: str = 'basis') -> nn.Module:
    """The deploy model: every sparse layer replaced by its deploy form (a plain layer with
    exactly N:M weights; an interspace conv in ``interspace_form``), every SpRe pair folded into
    one conv + BN. The result imports nothing from this package, except the interspace basis
    form (:class:`~spre_mmdet.sparsity.interspace.InterspaceDeployConv2d`).

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
                setattr(parent, name, child.to_deploy(interspace_form))
    return model


def sparse_layer_records(model: nn.Module,
                         interspace_form: str = 'basis') -> List[SparseLayerRecord]:
    """The record of every sparse layer of a training-time ``model``."""
    return [layer.record(name, interspace_form) for name, layer in sparse_layers(model)]


@dataclass
class LayerReport:
    """One row of the sparsity report: a conv/linear layer and its N:M status.

    ``tensor`` is the state-dict key, in the deploy model, of the weight the row describes (a
    conv's ``weight``, an interspace conv's ``gemm.weight``). ``method`` is ``'dense'`` and
    ``pattern`` empty for a layer without a record. ``valid`` is whether its weight is exactly
    its pattern, for layers that must be N:M; it is ``None`` for dense layers and for sparse
    layers that are not N:M by design.
    """

    name: str
    tensor: str
    method: str
    pattern: str
    shape: Tuple[int, ...]
    density: float
    status: str
    valid: Optional[bool]


def _report_row(name: str, tensor: str, weight: torch.Tensor,
                record: Optional[SparseLayerRecord], m: int) -> LayerReport:
    density = float((weight != 0).float().mean())
    shape = tuple(weight.shape)
    if record is None:  # dense: say why when the layout itself rules N:M out (the stem)
        reason = nm_incompatibility(weight.shape, m)
        status = f'dense: {reason}' if reason else 'dense (not selected)'
        return LayerReport(name, tensor, 'dense', '', shape, density, status, None)
    if not record.nm:
        return LayerReport(name, tensor, record.label, record.pattern, shape, density,
                           record.note, None)
    check = check_nm_tensor(weight, record.n, record.m)
    return LayerReport(name, tensor, record.label, record.pattern, shape, density,
                       check.explain(), check.ok)


def sparsity_report(model: nn.Module,
                    records: Optional[Sequence[SparseLayerRecord]] = None) -> List[LayerReport]:
    """Every conv/linear of ``model``: how it is sparse, and whether its weight is exactly its
    own N:M pattern, or why not.

    Args:
        model: a training-time model (its sparse layers describe themselves; a layer whose
            schedule has not ended is checked with its current mask) or a deploy model.
        records: for a deploy model, the records of the model it came from (the deploy
            checkpoint's ``meta['sparse_layers']``): the plain layers they name are reported
            with their training method and pattern, not as dense. An interspace deploy module is
            one row, its 1x1 GEMM weight.
    """
    own = sparse_layer_records(model)
    by_tensor = {record.tensor: record for record in records or ()}
    m = next((r.m for r in [*own, *by_tensor.values()]), 4)  # for the dense layers' reason
    rows, skip = [], None  # the submodules of a deploy module are not rows of their own
    for name, module in model.named_modules():
        if skip is not None and name.startswith(skip):
            continue
        if isinstance(module, SparseLayerMixin):
            learner = module.sparsity
            weight = module.deploy_weight() if learner.is_final else \
                (module.weight * learner.mask).detach()
            record = module.record(name)
            rows.append(_report_row(name, record.tensor, weight, record, m))
        elif isinstance(module, InterspaceDeployConv2d):
            skip = f'{name}.' if name else ''
            key = f'{name}.gemm.weight' if name else 'gemm.weight'
            rows.append(_report_row(name, key, module.gemm.weight.detach(), by_tensor.get(key),
                                    m))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            key = f'{name}.weight' if name else 'weight'
            rows.append(_report_row(name, key, module.weight.detach(), by_tensor.get(key), m))
    return rows


def format_report(rows: List[LayerReport]) -> str:
    """The report as an aligned text table."""
    header = ('layer', 'method', 'N:M', 'shape', 'density', 'status')
    lines = [(r.name, r.method, r.pattern or '-', 'x'.join(map(str, r.shape)),
              f'{r.density:.3f}', r.status) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)] if lines else []
    fmt = '  '.join('{:<%d}' % w for w in widths[:-1]) + '  {}'
    return '\n'.join(fmt.format(*row) for row in [header, *lines])
