"""Export a trained sparse detector as a plain mmdet detector (checkpoint + config).

The deploy model is what :func:`spre_mmdet.sparsity.reparameterize` returns: every sparse layer
folded into a plain layer with exactly N:M weights. Interspace convs are written in their merged
dense k x k form here, since stock mmdet's ResNet has no slot for their basis-conv + N:M 1x1 form
(that form is what ``reparameterize`` itself returns, for use from Python). The deploy config
uses stock mmdet types and does not import this package, so stock mmdet (and mmdeploy) load it.
"""
import copy
import os
import os.path as osp
import shutil
import tempfile
from typing import Dict

import torch
from mmengine.config import Config
from torch import nn

from .sparsity import (InterspaceConv2d, check_nm_tensor, format_report, merge_interspace,
                       reparameterize, sparse_layers, sparsity_report)

#: sparse module types of this package -> the stock mmdet types their deploy form fits
STOCK_TYPES = {'SparseResNet': 'ResNet', 'NMShared2FCBBoxHead': 'Shared2FCBBoxHead'}
SPARSE_CONV = 'NMConv2d'
OUR_HOOKS = {'SparsityHook', 'ReparameterizeHook'}


class ExportError(RuntimeError):
    """The model or target cannot be exported; the message says how to fix it."""


def _to_stock(node) -> int:
    """Rewrite sparse module configs in place into stock ones; return how many were found."""
    found = 0
    if isinstance(node, dict):
        if node.get('type') in STOCK_TYPES:
            node['type'] = STOCK_TYPES[node['type']]
            node.pop('sparsity', None)
            found += 1
        conv_cfg = node.get('conv_cfg')
        if isinstance(conv_cfg, dict) and conv_cfg.get('type') == SPARSE_CONV:
            node['conv_cfg'] = None
            found += 1
        for value in node.values():
            found += _to_stock(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found += _to_stock(value)
    return found


def deploy_config(cfg: Config) -> Config:
    """The training config rewritten for the deploy model: stock mmdet module types, no
    pretrained weights, no import of this package, none of its hooks."""
    cfg = Config(copy.deepcopy(cfg.to_dict()))
    if not _to_stock(cfg.model):
        raise ExportError('The config has no sparse module of this package '
                          f'({sorted(STOCK_TYPES)} or conv_cfg type {SPARSE_CONV!r}): it is not '
                          'a sparse training config.')
    if cfg.model.get('backbone') is not None:
        cfg.model.backbone.init_cfg = None  # the deploy checkpoint holds every weight
    imports = cfg.get('custom_imports', {}).get('imports', [])
    imports = [i for i in ([imports] if isinstance(imports, str) else imports)
               if i.split('.')[0] != 'spre_mmdet']
    if imports:
        cfg.custom_imports.imports = imports
    else:
        cfg.pop('custom_imports', None)
    if cfg.get('custom_hooks'):
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h.get('type') not in OUR_HOOKS]
    cfg.load_from = None
    cfg.resume = False
    return cfg


def verify_deploy(train_model: nn.Module, deploy_model: nn.Module) -> None:
    """Every layer that was sparse during training is exactly N:M in the deploy model."""
    deployed = dict(deploy_model.named_modules())
    problems = []
    for name, layer in sparse_layers(train_model):
        if isinstance(layer, InterspaceConv2d):
            continue  # exported merged and dense; the report says so
        check = check_nm_tensor(deployed[name].weight, layer.sparsity.n, layer.sparsity.m)
        if not check.ok:
            problems.append(f'{name}: {check.explain()}')
    if problems:
        raise ExportError('The re-parameterized model is not exactly N:M:\n' +
                          '\n'.join(problems))


def export_deploy(model: nn.Module, cfg: Config, out_dir: str, force: bool = False,
                  meta: dict = None) -> Dict[str, str]:
    """Re-parameterize ``model`` and write ``deploy.pth``, ``deploy_config.py`` and
    ``sparsity_report.txt`` into ``out_dir``. Nothing is written unless all of it succeeds.

    Args:
        model: the trained sparse detector (training-time form).
        cfg: its config.
        out_dir: target directory; must be empty or absent unless ``force``.
        force: replace an existing non-empty ``out_dir``.
        meta: extra metadata stored in the checkpoint.

    Returns:
        Paths of the written files.
    """
    if osp.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise ExportError(f'{out_dir} is not empty; choose another --out or pass --force to '
                          'replace it.')
    layers = list(sparse_layers(model))
    if not layers:
        raise ExportError('This model has no sparse layers: it is not from a sparse run. Give '
                          'the config and checkpoint of a sparse training run.')
    stale = [name for name, layer in layers if layer.sparsity.needs_init]
    if stale:
        raise ExportError(f'The checkpoint holds no N:M masks (e.g. for {stale[0]}): it is not '
                          'from a sparse training run. Export a checkpoint written by a sparse '
                          'config (its state dict has "...sparsity.mask" entries).')
    n, m = layers[0][1].sparsity.n, layers[0][1].sparsity.m
    was_training = model.training
    model.eval()
    merged = [name for name, layer in layers if isinstance(layer, InterspaceConv2d)]
    deploy_model = reparameterize(merge_interspace(model) if merged else model)
    model.train(was_training)
    verify_deploy(model, deploy_model)
    report = format_report(sparsity_report(deploy_model, n, m))
    if merged:
        report += (f'\n{len(merged)} interspace convs are exported merged into dense k x k convs '
                   '(stock ResNet); their N:M form is basis conv + N:M 1x1 conv '
                   '(spre_mmdet.sparsity.reparameterize).')

    parent = osp.dirname(osp.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.deploy-', dir=parent)
    try:
        state = {k: v.detach().cpu() for k, v in deploy_model.state_dict().items()}
        torch.save({'state_dict': state,
                    'meta': dict(meta or {}, sparsity=f'{n}:{m}', deploy=True)},
                   osp.join(tmp, 'deploy.pth'))
        deploy_config(cfg).dump(osp.join(tmp, 'deploy_config.py'))
        with open(osp.join(tmp, 'sparsity_report.txt'), 'w') as f:
            f.write(report + '\n')
        if osp.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: osp.join(out_dir, name)
            for name in ('deploy.pth', 'deploy_config.py', 'sparsity_report.txt')}
