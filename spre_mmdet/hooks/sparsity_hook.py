"""Drives every sparse layer's mask schedule, logs sparsity and writes the per-layer report."""
import copy
import json
import os.path as osp
from collections import defaultdict

import torch
from torch.nn.parallel import DistributedDataParallel
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS  # the root registry: found from mmdet and mmpretrain configs

from ..errors import ConfigError
from ..sparsity import (format_report, refresh_masks, register_srste_decay, sparse_layers,
                        sparsity_report, spre_pairs)


@HOOKS.register_module()
class SparsityHook(Hook):
    """Advance masks after every optimizer step; add SR-STE's decay before it; log sparsity;
    report at the end of training.

    Masks are refreshed right after each optimizer step, to the iteration that comes next, so
    that between iterations the masks always belong to the current weights: validation,
    checkpoints, export and resume all see the same consistent state (and a resumed run
    continues exactly like an uninterrupted one).

    Under DDP, when a refresh changes which parameters train (LBC's scores freeze at the end
    of their schedule, or are loaded final), the model is wrapped again, so that DDP reduces
    only the parameters that still train: from then on an LBC run communicates what an SR-STE
    run does, and needs no ``find_unused_parameters``.

    SR-STE's decay is added to the unscaled, accumulated gradient right before every optimizer
    step (:func:`~spre_mmdet.sparsity.register_srste_decay` on each optimizer of the run), so
    that it does not depend on AMP's loss scale or on ``accumulative_counts``.

    Args:
        log_interval: log overall and per-stage density every this many iterations.
    """

    priority = 'ABOVE_NORMAL'  # before CheckpointHook saves in after_train_iter

    def __init__(self, log_interval: int = 50):
        self.log_interval = log_interval
        self._decay_handles = []

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_train(self, runner) -> None:
        """Check the mask schedules against the run, then derive the masks of weights loaded
        after init (``load_from`` a dense checkpoint).

        Mask schedules given relative to the run (LBC ``span``) are fixed here from
        ``runner.max_iters``; a schedule that cannot end by the last iteration is refused now,
        not at export time after training.
        """
        model = self._model(runner)
        layers = list(sparse_layers(model))
        if not layers:
            raise ConfigError('SparsityHook is configured but the model has no sparse layers: '
                              'use a sparse backbone (e.g. type="SparseResNet") or drop the '
                              'hook.')
        paired = {id(conv) for _, conv, _ in spre_pairs(model)}
        unpaired = [name for name, layer in layers
                    if getattr(layer, 'structure', None) == 'spre' and id(layer) not in paired]
        if unpaired:
            raise ConfigError(
                f'{len(unpaired)} SpRe convs lost their two-branch BN, e.g. {unpaired[0]}: '
                'something replaced SpReBatchNorm2d (typically a SyncBatchNorm conversion such '
                "as the runner's sync_bn option), which would silently drop the extra branch. "
                'Remove the conversion for SpRe backbones.')
        problems = []
        for name, layer in layers:
            layer.sparsity.resolve_schedule(runner.max_iters)
            problem = layer.sparsity.schedule_problem(runner.max_iters)
            if problem:
                problems.append(f'{name} ({layer.sparsity.method}): {problem}')
        if problems:
            raise ConfigError(f'{len(problems)} sparse layers would not be final when this '
                              f'{runner.max_iters}-iteration run ends, e.g. {problems[0]}.')
        refresh_masks(model, runner.iter)
        self._rewrap_if_trainable_changed(runner)
        wrapper = runner.optim_wrapper
        wrappers = wrapper.optim_wrappers.values() if hasattr(wrapper, 'optim_wrappers') \
            else [wrapper]
        self._decay_handles = [register_srste_decay(model, w.optimizer) for w in wrappers]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        model = self._model(runner)
        refresh_masks(model, runner.iter + 1)
        self._rewrap_if_trainable_changed(runner)
        if self.every_n_train_iters(runner, self.log_interval):
            for key, value in self.densities(model).items():
                runner.message_hub.update_scalar(f'train/density/{key}', value)
            for key, value in self.spre_branch(model).items():
                runner.message_hub.update_scalar(f'train/spre/{key}', value)

    @staticmethod
    def _rewrap_if_trainable_changed(runner) -> None:
        """Wrap the model in DDP again when the parameters that train are no longer those DDP
        reduces (every rank refreshes to the same state at the same iteration, so every rank
        does this at the same time, as DDP's constructor needs)."""
        ddp = runner.model
        if not isinstance(ddp, DistributedDataParallel):
            return
        trainable = [p for p in ddp.module.parameters() if p.requires_grad]
        reduced = getattr(ddp, '_module_parameters', None)
        if reduced is not None and {id(p) for p in reduced} == {id(p) for p in trainable}:
            return
        module = ddp.module
        del ddp
        runner.model = None  # release the old reducer before building the new one
        runner.model = runner.wrap_model(copy.deepcopy(runner.cfg.get('model_wrapper_cfg')),
                                         module)
        runner.logger.info(f'SparsityHook: {len(trainable)} parameters train now; DDP wraps '
                           'the model again to reduce only those.')

    @staticmethod
    @torch.no_grad()
    def spre_branch(model) -> dict:
        """What SpRe's extra branch contributes, averaged over its blocks (empty without
        SpRe): ``branch_ratio``, ``||K_rep|| / ||K_main||`` of the folded kernels, and
        ``gamma_rep``, the mean |gamma| of the branch BNs. Both near 0 mean a dead branch: the
        model is then plain N:M under SpRe's name. ``spatial_changes``: entries of ``S`` flipped
        per block since training started (an unsettled ``S`` keeps moving the branch)."""
        ratios, gammas, changes = [], [], []
        for _, conv, norm in spre_pairs(model):
            ratios.append(norm.branch_ratio(conv))
            gammas.append(float(norm.rep_bn.weight.abs().mean()))
            changes.append(getattr(conv, 'spatial_changes', 0))
        if not ratios:
            return {}
        return dict(branch_ratio=sum(ratios) / len(ratios), gamma_rep=sum(gammas) / len(gammas),
                    spatial_changes=sum(changes) / len(changes))

    @staticmethod
    @torch.no_grad()
    def densities(model) -> dict:
        """Fraction of non-zero mask entries, overall and per top-level stage (e.g. layer1)."""
        kept, total = defaultdict(int), defaultdict(int)
        for name, layer in sparse_layers(model):
            stage = name.split('.')[1] if name.startswith('backbone.') else name.split('.')[0]
            for key in ('all', stage):
                kept[key] += int(layer.sparsity.mask.sum())
                total[key] += layer.sparsity.mask.numel()
        return {key: kept[key] / total[key] for key in total}

    def after_train(self, runner) -> None:
        for handle in self._decay_handles:
            handle.remove()
        self._decay_handles = []
        model = self._model(runner)
        rows = sparsity_report(model)
        table = format_report(rows)
        patterns = sorted({row.pattern for row in rows if row.pattern})
        runner.logger.info(f'Sparsity report ({", ".join(patterns)}):\n{table}')
        if runner.rank == 0:
            with open(osp.join(runner.work_dir, 'sparsity_report.txt'), 'w') as f:
                f.write(table + '\n')
            with open(osp.join(runner.work_dir, 'sparsity_report.json'), 'w') as f:
                json.dump([row.__dict__ for row in rows], f, indent=1)
