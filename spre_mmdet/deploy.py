"""Export a trained sparse detector as a deployable mmdet detector (checkpoint + config).

The deploy model is what :func:`spre_mmdet.sparsity.reparameterize` returns: every sparse layer
folded into a plain layer with exactly N:M weights. Its config uses stock mmdet types and does
not import this package, so stock mmdet (and mmdeploy) load it.

Interspace convs have two deploy forms (``interspace_form``):

* ``'basis'`` (default): basis conv + exactly N:M 1x1 conv (``InterspaceDeployConv2d``), the
  form sparse tensor cores can run. Stock ResNet has no slot for it, so the deploy config keeps
  ``SparseResNet`` with ``sparsity.deploy=True`` (which builds that structure and nothing else)
  and imports this package.
* ``'merged'``: one dense k x k conv per layer (stock ResNet, no import of this package), for
  hardware without sparse support.
"""
import copy
import os
import os.path as osp
import shutil
import tempfile
from typing import Dict, Optional, Sequence

import torch
from mmengine.config import Config
from torch import nn

from .errors import ExportError
from .sparsity import (SparseLayerRecord, check_nm_tensor, format_report, reparameterize,
                       sparse_layer_records, sparse_layers, sparsity_report)

#: sparse module types of this package -> the stock mmdet types their deploy form fits
STOCK_TYPES = {'SparseResNet': 'ResNet', 'NMResNet': 'ResNet', 'NMResNet_CIFAR': 'ResNet_CIFAR',
               'NMShared2FCBBoxHead': 'Shared2FCBBoxHead'}
#: this package's sparse ResNets, and the depths the stock ResNets build (not ResNet-10)
SPARSE_RESNETS = ('SparseResNet', 'NMResNet', 'NMResNet_CIFAR')
STOCK_DEPTHS = (18, 34, 50, 101, 152)
SPARSE_CONV = 'NMConv2d'
OUR_HOOKS = {'SparsityHook', 'ReparameterizeHook', 'EpochSeedHook'}
#: deploy forms of interspace convs: N:M basis conv + 1x1, or merged dense k x k
INTERSPACE_FORMS = ('basis', 'merged')


def _to_stock(node, interspace_form: str) -> int:
    """Rewrite sparse module configs in place into their deploy ones; return how many were
    found. A sparse ResNet whose deploy structure a stock ResNet cannot build (interspace convs
    kept in basis form, or ResNet-10) stays this package's type with ``sparsity.deploy=True``,
    which builds exactly that structure."""
    found = 0
    if isinstance(node, dict):
        sparsity = node.get('sparsity') or {}
        keep_ours = node.get('type') in SPARSE_RESNETS and (
            (sparsity.get('interspace') is not None and interspace_form == 'basis')
            or node.get('depth') not in STOCK_DEPTHS)
        if keep_ours:  # a structure stock ResNets cannot build: ours in its deploy form
            node['sparsity'] = {key: value for key, value in sparsity.items()
                                if key not in ('learner', 'spre')}
            node['sparsity']['deploy'] = True
            found += 1
        elif node.get('type') in STOCK_TYPES:
            node['type'] = STOCK_TYPES[node['type']]
            node.pop('sparsity', None)
            found += 1
        conv_cfg = node.get('conv_cfg')
        if isinstance(conv_cfg, dict) and conv_cfg.get('type') == SPARSE_CONV:
            node['conv_cfg'] = None
            found += 1
        for value in node.values():
            found += _to_stock(value, interspace_form)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found += _to_stock(value, interspace_form)
    return found


def check_interspace_form(interspace_form: str) -> None:
    """Raise :class:`ExportError` naming the choices unless ``interspace_form`` is one."""
    if interspace_form not in INTERSPACE_FORMS:
        raise ExportError(f'Unknown interspace_form {interspace_form!r}; choose one of '
                          f'{INTERSPACE_FORMS} (basis: N:M basis conv + 1x1, merged: dense k x k '
                          'convs for stock mmdet).')


def deploy_config(cfg: Config, interspace_form: str = 'basis') -> Config:
    """The training config rewritten for the deploy model: stock mmdet module types, no
    pretrained weights, none of this package's hooks, and no import of this package unless
    interspace convs are kept in their basis form (then ``SparseResNet(sparsity.deploy=True)``
    builds them)."""
    check_interspace_form(interspace_form)
    cfg = Config(copy.deepcopy(cfg.to_dict()))
    if not _to_stock(cfg.model, interspace_form):
        raise ExportError('The config has no sparse module of this package '
                          f'({sorted(STOCK_TYPES)} or conv_cfg type {SPARSE_CONV!r}): it is not '
                          'a sparse training config.')
    if cfg.model.get('backbone') is not None:
        cfg.model.backbone.init_cfg = None  # the deploy checkpoint holds every weight
    imports = cfg.get('custom_imports', {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    ours = [i for i in imports if i.split('.')[0] == 'spre_mmdet']
    imports = [i for i in imports if i not in ours]
    if _needs_package(cfg.model):
        # the modules the training config imported (spre_mmdet, or spre_mmdet.classification
        # for mmpretrain) register the deploy structure in the same registry
        imports = [*(ours or ['spre_mmdet']), *imports]
        cfg.custom_imports = dict(imports=imports, allow_failed_imports=False)
    elif imports:
        cfg.custom_imports.imports = imports
    else:
        cfg.pop('custom_imports', None)
    if cfg.get('custom_hooks'):
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h.get('type') not in OUR_HOOKS]
    cfg.load_from = None
    cfg.resume = False
    return cfg


def _needs_package(model_cfg) -> bool:
    """Whether the deploy model config still uses a type of this package."""
    if isinstance(model_cfg, dict):
        return (model_cfg.get('type') in STOCK_TYPES or
                any(_needs_package(value) for value in model_cfg.values()))
    if isinstance(model_cfg, (list, tuple)):
        return any(_needs_package(value) for value in model_cfg)
    return False


def verify_deploy(deploy_model: nn.Module, records: Sequence[SparseLayerRecord]) -> None:
    """Every record that must be N:M is exactly its pattern in the deploy model (an interspace
    conv in basis form: its 1x1 GEMM weight). Records that are not N:M by design (unstructured
    learners, interspace convs merged into dense convs) are reported, not checked."""
    state = deploy_model.state_dict()
    problems = []
    for record in records:
        if record.nm:
            check = check_nm_tensor(state[record.tensor], record.n, record.m)
            if not check.ok:
                problems.append(f'{record.name}: {check.explain()}')
    if problems:
        raise ExportError('The re-parameterized model is not exactly N:M:\n' +
                          '\n'.join(problems))


def interspace_summary(records: Sequence[SparseLayerRecord],
                       interspace_form: str) -> Optional[str]:
    """One sentence on how the interspace convs among ``records`` are exported, or ``None`` if
    there are none (for the report and the logs)."""
    layers = [record for record in records if record.structure == 'interspace']
    if not layers:
        return None
    pattern = layers[0].pattern
    if interspace_form == 'merged':
        return (f'{len(layers)} interspace convs exported in MERGED form: dense k x k convs in a '
                f'stock ResNet (not {pattern}, no sparse speed-up; deploy_config.py does not '
                f'import spre_mmdet). For the {pattern} form export with '
                'interspace_form="basis".')
    unstructured = sum(not record.nm for record in layers)
    return (f'{len(layers)} interspace convs exported in BASIS form: basis conv (k*k filters) + '
            f'{pattern} 1x1 conv, built by SparseResNet(sparsity.deploy=True), so '
            'deploy_config.py imports spre_mmdet' +
            (f'; {unstructured} have unstructured coefficients and are not {pattern}'
             if unstructured else '') +
            '. For a stock mmdet checkpoint (dense k x k convs) export with '
            'interspace_form="merged".')


def build_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` in the registry of the config's own scope (``default_scope``:
    ``mmdet`` for detectors, ``mmpretrain`` for classifiers), importing its custom modules."""
    from mmengine.registry import MODELS
    from mmengine.utils import import_modules_from_strings
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    with MODELS.switch_scope_and_registry(cfg.get('default_scope', 'mmdet')) as registry:
        return registry.build(copy.deepcopy(cfg.model))


def _check_loadable(cfg: Config, state: Dict[str, torch.Tensor]) -> None:
    """The deploy config builds a model that takes the deploy state dict exactly."""
    model = build_model(cfg)
    try:
        result = model.load_state_dict(state, strict=False)
        problem = (f'missing: {result.missing_keys[:3]}, unexpected: '
                   f'{result.unexpected_keys[:3]}'
                   if result.missing_keys or result.unexpected_keys else None)
    except RuntimeError as e:  # shape mismatches
        problem = str(e).splitlines()[-1].strip()
    if problem:
        raise ExportError(f'The deploy config does not match the deploy checkpoint ({problem}). '
                          'This is a bug; please report it with the training config.')


#: the files an export writes, and the marker that makes a folder one this package owns
DEPLOY_FILES = ('deploy.pth', 'deploy_config.py', 'sparsity_report.txt')
DEPLOY_MARKER = '.spre_mmdet_deploy'


def _same_or_inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    path, folder = osp.realpath(path), osp.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_export_target(out_dir: str, force: bool = False, protected: Sequence[str] = (),
                        files: Sequence[str] = DEPLOY_FILES,
                        marker: str = DEPLOY_MARKER) -> None:
    """Refuse an export target where writing could lose data; nothing is written or deleted.

    An export writes only into a new or empty folder, or (with ``force``) over a deploy folder
    that an earlier export wrote (it holds :data:`DEPLOY_MARKER` and nothing but
    :data:`DEPLOY_FILES`), and then replaces only those files.

    Args:
        out_dir: the target folder.
        force: replace an earlier export in ``out_dir``.
        protected: paths the export must never touch (its input checkpoint, the work dir); the
            current folder is always protected.
        files, marker: the files an export of this kind writes, and its marker (default: the
            deploy export's; the ONNX export, :mod:`spre_mmdet.export`, passes its own).

    Raises:
        ExportError: naming the problem and the fix.
    """
    if not out_dir:
        raise ExportError('The deploy folder is empty (""): name a new folder, e.g. '
                          '--out work_dirs/my_run/deploy.')
    for path in (*protected, os.getcwd()):
        if _same_or_inside(path, out_dir):
            what = 'the current folder' if path == os.getcwd() else path
            raise ExportError(
                f'Refusing to export into {out_dir}: it holds {what}. An export writes only into '
                'a new or empty folder, or over its own earlier export; choose e.g. '
                f'{osp.join(out_dir, "deploy") if osp.isdir(out_dir) else out_dir + "_deploy"}.')
    if not osp.lexists(out_dir):
        return
    if not osp.isdir(out_dir):
        raise ExportError(f'Refusing to export into {out_dir}: it is a file, not a folder.')
    entries = sorted(os.listdir(out_dir))
    if not entries:
        return
    foreign = [name for name in entries if name not in (*files, marker)]
    if foreign or marker not in entries:
        shown = ', '.join((foreign or entries)[:5]) + (' ...' if len(foreign or entries) > 5
                                                       else '')
        raise ExportError(
            f'Refusing to export into {out_dir}: it holds files this tool did not write '
            f'({shown}), and an export never deletes those, even with --force. Choose a new or '
            'empty folder.')
    if not force:
        raise ExportError(f'{out_dir} holds an earlier export; pass --force to replace it (only '
                          f'its files {", ".join(files)} are replaced), or choose another '
                          'folder.')


def _make_folder(path: str) -> None:
    """Create ``path`` (and parents) with the usual permissions, or explain why not."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ExportError(f'Cannot create the deploy folder {path}: {e.strerror}. Choose a '
                          'writable location.') from None


def _write_files(out_dir: str, write) -> None:
    """Write the deploy files into a fresh folder next to ``out_dir``, then move them in.

    ``write(folder)`` writes :data:`DEPLOY_FILES` into ``folder``. The files reach ``out_dir``
    only once all of them are complete; a new ``out_dir`` appears in one rename.
    """
    parent = osp.dirname(osp.abspath(out_dir))
    _make_folder(parent)
    try:
        tmp = tempfile.mkdtemp(prefix='.deploy-', dir=parent)
    except OSError as e:
        raise ExportError(f'Cannot write into {parent}: {e.strerror}. Choose a writable '
                          '--out.') from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); a deploy is shared
        write(tmp)
        with open(osp.join(tmp, DEPLOY_MARKER), 'w') as f:
            f.write('Written by spre-mmdet\'s export; it replaces only ' +
                    ', '.join(DEPLOY_FILES) + ' here.\n')
        if osp.isdir(out_dir):  # an (empty or earlier) deploy folder: replace file by file
            for name in (*DEPLOY_FILES, DEPLOY_MARKER):
                os.replace(osp.join(tmp, name), osp.join(out_dir, name))
            os.rmdir(tmp)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_deploy(model: nn.Module, cfg: Config, out_dir: str, force: bool = False,
                  meta: dict = None, interspace_form: str = 'basis',
                  protected: Sequence[str] = ()) -> Dict[str, str]:
    """Re-parameterize ``model`` and write ``deploy.pth``, ``deploy_config.py`` and
    ``sparsity_report.txt`` into ``out_dir``. Nothing is written unless all of it succeeds,
    including a check that the written config builds a model taking the checkpoint exactly, and
    nothing is ever deleted except the files of an earlier export that ``force`` replaces
    (:func:`check_export_target`).

    Args:
        model: the trained sparse detector (training-time form).
        cfg: its config.
        out_dir: target folder: new, empty, or (with ``force``) an earlier export.
        force: replace an earlier export in ``out_dir``.
        meta: extra metadata stored in the checkpoint.
        interspace_form: ``'basis'`` or ``'merged'``, for interspace convs (see the module doc).
        protected: paths the export must not touch (input checkpoint, work dir).

    Returns:
        Paths of the written files.
    """
    check_interspace_form(interspace_form)
    check_export_target(out_dir, force, protected)
    layers = list(sparse_layers(model))
    if not layers:
        raise ExportError('This model has no sparse layers: it is not from a sparse run. Give '
                          'the config and checkpoint of a sparse training run.')
    stale = [name for name, layer in layers if layer.sparsity.needs_init]
    if stale:
        raise ExportError(f'The checkpoint holds no N:M masks (e.g. for {stale[0]}): it is not '
                          'from a sparse training run. Export a checkpoint written by a sparse '
                          'config (its state dict has "...sparsity.mask" entries).')
    records = sparse_layer_records(model, interspace_form)
    was_training = model.training
    model.eval()
    deploy_model = reparameterize(model, interspace_form=interspace_form)
    model.train(was_training)
    verify_deploy(deploy_model, records)
    report = format_report(sparsity_report(deploy_model, records))
    summary = interspace_summary(records, interspace_form)
    if summary:
        report += '\n' + summary
    state = {k: v.detach().cpu() for k, v in deploy_model.state_dict().items()}
    config = deploy_config(cfg, interspace_form)
    _check_loadable(config, state)
    patterns = sorted({record.pattern for record in records})
    meta = dict(meta or {}, sparsity=patterns[0] if len(patterns) == 1 else patterns,
                deploy=True, sparse_layers=[record.to_dict() for record in records])
    if any(record.structure == 'interspace' for record in records):
        meta['interspace_form'] = interspace_form

    def write(folder):
        torch.save({'state_dict': state, 'meta': meta}, osp.join(folder, 'deploy.pth'))
        config.dump(osp.join(folder, 'deploy_config.py'))
        with open(osp.join(folder, 'sparsity_report.txt'), 'w') as f:
            f.write(report + '\n')

    _write_files(out_dir, write)
    return {name: osp.join(out_dir, name) for name in DEPLOY_FILES}
