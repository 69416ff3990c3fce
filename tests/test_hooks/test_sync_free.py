"""The sparsity code adds no device-to-host synchronization to a training iteration.

On CUDA an op that reads a value back to the host (``.item()``, ``int(t)``, ``nonzero``,
``torch.equal``, ...) stops the CPU from running ahead until the GPU queue drains. These ops are
counted here on CPU with a dispatch mode, which sees the same ops CUDA would run.
"""
import collections

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS
from mmengine.testing import RunnerTestCase
from torch.utils._python_dispatch import TorchDispatchMode

from spre_mmdet.models import SparseResNet
from spre_mmdet.sparsity import refresh_masks

#: ops that force a device-to-host copy on CUDA
SYNC_OPS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.equal, torch.ops.aten.nonzero,
            torch.ops.aten.masked_select, torch.ops.aten.unique_consecutive,
            torch.ops.aten._unique2, torch.ops.aten.repeat_interleave}

SRSTE = dict(type='SRSTEMask')
LBC = dict(type='LBCMask', t_i=0, t_f=5)  # removal steps inside the counted iterations
METHODS = {
    'srste': dict(learner=SRSTE),
    'asp': dict(learner=dict(type='FixedMask')),
    'spre': dict(learner=SRSTE, spre=dict(rep_gamma=1.0)),
    'lbc': dict(learner=LBC),
    'spre_lbc': dict(learner=LBC, spre=dict(rep_gamma=1.0)),
    'interspace': dict(learner=SRSTE, interspace=dict(pruning='nm')),
}


class CountSyncs(TorchDispatchMode):
    """Counts the sync-forcing ops dispatched while active."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _backbone(sparsity, norm_eval=True):
    torch.manual_seed(0)
    return SparseResNet(depth=18, base_channels=8, frozen_stages=-1, norm_eval=norm_eval,
                        sparsity=sparsity)


@pytest.mark.parametrize('norm_eval', [True, False], ids=['running_stats', 'batch_stats'])
@pytest.mark.parametrize('method', list(METHODS))
def test_sparse_parts_never_sync(method, norm_eval):
    """Refresh, forward, backward and SGD step of a SparseResNet: no sync, on any iteration
    (LBC's removal steps and its freeze included)."""
    model = _backbone(METHODS[method], norm_eval)
    model.train()
    refresh_masks(model, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 3, 32, 32)
    with CountSyncs() as mode:
        for iteration in range(1, 7):
            refresh_masks(model, iteration)
            sum(out.sum() for out in model(x)).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert not mode.counts, dict(mode.counts)


class ImageDataset(torch.utils.data.Dataset):
    METAINFO = dict()

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.images = torch.randn(12, 3, 32, 32, generator=gen)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return dict(inputs=self.images[index])


class BackboneModel(BaseModel):
    """A SparseResNet (or a dense ResNet: ``sparsity=None``) with a toy loss."""

    def __init__(self, sparsity=None, data_preprocessor=None):
        super().__init__(data_preprocessor)
        stages = (False,) * 4 if sparsity is None else (True,) * 4
        self.backbone = _backbone(dict(sparsity or {}, stages=stages))

    def forward(self, inputs, data_samples=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.backbone(inputs)[-1]
        return dict(loss=out.square().mean()) if mode == 'loss' else out


class CountSyncsOfIterations(Hook):
    """Counts the syncs of every training iteration, from before the first hook's
    before_train_iter to after the last hook's after_train_iter (priorities ``HIGHEST`` for
    entering, ``LOWEST`` for leaving: registered as two hooks)."""

    def __init__(self, enter: bool, shared: dict):
        self.enter, self.shared = enter, shared
        self.priority = 'HIGHEST' if enter else 'LOWEST'

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.enter:
            self.shared['mode'] = CountSyncs().__enter__()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if not self.enter:
            mode = self.shared.pop('mode')
            mode.__exit__(None, None, None)
            self.shared.setdefault('counts', []).append(sum(mode.counts.values()))


class TestHookedIterations(RunnerTestCase):

    def setUp(self):
        super().setUp()
        MODELS.register_module(module=BackboneModel, force=True)
        DATASETS.register_module(module=ImageDataset, force=True)

    def _count(self, sparsity):
        cfg = self.iter_based_cfg.copy()
        cfg.model = dict(type='BackboneModel', sparsity=sparsity)
        cfg.train_dataloader.dataset = dict(type='ImageDataset')
        cfg.train_dataloader.batch_size = 2
        cfg.train_cfg = dict(by_epoch=False, max_iters=6, val_interval=100)
        cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
        cfg.default_hooks.logger = dict(type='LoggerHook', interval=100)
        cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=100)
        shared = {}
        cfg.custom_hooks = [dict(type='SparsityHook', log_interval=100)] if sparsity else []
        cfg.experiment_name = f'syncs_{len(self._runs)}'
        self._runs.append(cfg.experiment_name)
        runner = self.build_runner(cfg)
        runner.register_hook(CountSyncsOfIterations(True, shared))
        runner.register_hook(CountSyncsOfIterations(False, shared))
        runner.train()
        return shared['counts']

    _runs = []

    @pytest.mark.slow
    def test_every_method_syncs_as_the_dense_model(self):
        """Hooked training iterations of every method (masks refreshed, LBC removing subsets
        and freezing) sync exactly as often as the dense model's: mmengine's own loss logging
        is all there is."""
        dense = self._count(None)
        for method, sparsity in METHODS.items():
            assert self._count(sparsity) == dense, method
