"""SparsityHook and ReparameterizeHook on mmengine's toy runner (RunnerTestCase)."""
import json
import os
import os.path as osp

import pytest
import torch
from mmengine.registry import DATASETS, MODELS
from mmengine.testing import RunnerTestCase
from mmengine.testing.runner_test_case import ToyDataset, ToyModel

from spre_mmdet.errors import ConfigError, ExportError
from spre_mmdet.hooks import ReparameterizeHook, SparsityHook
from spre_mmdet.sparsity import nm_mask, sparsify_layer


class SparseToyModel(ToyModel):
    """mmengine's ToyModel with linear1 made 1:2 SR-STE sparse (its in-features are 2)."""

    def __init__(self, data_preprocessor=None):
        super().__init__(data_preprocessor)
        sparsify_layer(self, 'linear1', 'srste', 1, 2)


class SeededToyDataset(ToyDataset):
    """mmengine's ToyDataset with data from its own generator: ToyDataset draws its data from
    the global RNG when mmengine.testing is imported, so it depends on what ran before."""

    data = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    label = torch.ones(12)


class RecordMasks(SparsityHook):
    """Records, after each iteration, the mask and the mask of the current weight."""

    priority = 'LOW'

    def __init__(self):
        super().__init__(log_interval=1)
        self.records = []

    def before_train(self, runner):
        pass

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        layer = runner.model.linear1
        self.records.append((layer.sparsity.mask.clone(), nm_mask(layer.weight, 1, 2)))

    def after_train(self, runner):
        pass


class TestSparsityHook(RunnerTestCase):

    def setUp(self):
        super().setUp()
        MODELS.register_module(module=SparseToyModel, force=True)
        DATASETS.register_module(module=SeededToyDataset, force=True)
        self.epoch_based_cfg.model = dict(type='SparseToyModel')
        self.epoch_based_cfg.train_dataloader.dataset = dict(type='SeededToyDataset')
        self.epoch_based_cfg.env_cfg = dict(dist_cfg=dict(backend='gloo'))

    def test_masks_follow_weights_after_every_step(self):
        """After every optimizer step the mask is the N:M mask of the updated weight."""
        recorder = RecordMasks()
        cfg = self.epoch_based_cfg
        cfg.custom_hooks = [dict(type='SparsityHook', log_interval=1)]
        cfg.randomness = dict(seed=0)  # with the seeded data: the mask flips within 8 steps
        runner = self.build_runner(cfg)
        runner.register_hook(recorder)
        runner.train()
        assert len(recorder.records) == 8  # 2 epochs x 4 iterations
        changed = False
        for mask, expected in recorder.records:
            assert torch.equal(mask, expected)
            changed |= not torch.equal(mask, recorder.records[0][0])
        assert changed, 'lr 0.1 on the toy problem should move the mask at least once'

    def test_logs_density_and_writes_report(self):
        """Density is logged through the message hub; the report lists every layer."""
        cfg = self.epoch_based_cfg
        cfg.custom_hooks = [dict(type='SparsityHook', log_interval=1)]
        runner = self.build_runner(cfg)
        runner.train()
        density = runner.message_hub.get_scalar('train/density/all').current()
        assert density == 2 / 4  # linear1: 1 of 2 kept; linear2 is dense and not counted
        rows = json.load(open(osp.join(runner.work_dir, 'sparsity_report.json')))
        assert [r['name'] for r in rows] == ['linear1', 'linear2']
        assert rows[0]['valid'] and rows[0]['method'] == 'srste' and rows[0]['pattern'] == '1:2'
        assert 'dense' in rows[1]['status']

    def test_refuses_a_model_without_sparse_layers(self):
        """The hook on a dense model is a configuration error, named as such."""
        cfg = self.epoch_based_cfg
        cfg.model = dict(type='ToyModel')
        cfg.custom_hooks = [dict(type='SparsityHook')]
        runner = self.build_runner(cfg)
        with self.assertRaisesRegex(ConfigError, 'no sparse layers'):
            runner.train()


class LBCToyModel(ToyModel):
    """mmengine's ToyModel with linear1 made 1:2 LBC sparse; ``lbc`` are the learner options."""

    lbc = dict(t_f=6)

    def __init__(self, data_preprocessor=None):
        super().__init__(data_preprocessor)
        sparsify_layer(self, 'linear1', 'lbc', 1, 2, **self.lbc)


class TestSchedulesCheckedBeforeTraining(RunnerTestCase):
    """The toy run has 2 epochs x 4 iterations = 8 iterations."""

    def setUp(self):
        super().setUp()
        self.epoch_based_cfg.env_cfg = dict(dist_cfg=dict(backend='gloo'))
        self.epoch_based_cfg.custom_hooks = [dict(type='SparsityHook')]

    def build_lbc_runner(self, **lbc):
        LBCToyModel.lbc = lbc
        MODELS.register_module(module=LBCToyModel, force=True)
        self.epoch_based_cfg.model = dict(type='LBCToyModel')
        self.epoch_based_cfg.optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01))
        return self.build_runner(self.epoch_based_cfg)

    def test_schedule_ending_after_the_run_fails_before_the_first_iteration(self):
        """An LBC t_f after the last iteration is refused in before_train, naming t_f."""
        runner = self.build_lbc_runner(t_f=29320)
        with self.assertRaisesRegex(ConfigError, r't_f=29320.*8-iteration run|8-iteration.*'
                                                 r't_f=29320'):
            runner.train()
        assert runner.iter == 0

    def test_span_is_resolved_from_the_run_length_and_ends_final(self):
        """span=(0, 0.5) becomes t_i=0, t_f=4 of 8 iterations; the run ends exactly 1:2."""
        runner = self.build_lbc_runner(span=(0, 0.5))
        runner.train()
        learner = runner.model.linear1.sparsity
        assert (learner.t_i, learner.t_f) == (0, 4)
        assert learner.is_final


class TestReparameterizeHookChecks(RunnerTestCase):

    def setUp(self):
        super().setUp()
        self.epoch_based_cfg.env_cfg = dict(dist_cfg=dict(backend='gloo'))

    def test_dense_model_fails_before_training(self):
        """ReparameterizeHook on a dense model is refused before the first iteration."""
        cfg = self.epoch_based_cfg
        cfg.custom_hooks = [dict(type='ReparameterizeHook')]
        runner = self.build_runner(cfg)
        with self.assertRaisesRegex(ConfigError, 'no sparse layers'):
            runner.train()
        assert runner.iter == 0

    def test_work_dir_as_target_is_refused_at_build(self):
        """out_dir '' or '.' (the work dir itself) is refused when the hook is built."""
        for out_dir in ('', '.', './'):
            with self.assertRaisesRegex(ConfigError, 'work dir itself'):
                ReparameterizeHook(out_dir=out_dir)

    def test_target_with_foreign_files_fails_before_training_and_keeps_them(self):
        """An absolute out_dir holding other files is refused before training; files kept."""
        MODELS.register_module(module=SparseToyModel, force=True)
        target = osp.join(self.temp_dir.name, 'precious')
        os.makedirs(target)
        with open(osp.join(target, 'notes.txt'), 'w') as f:
            f.write('mine')
        cfg = self.epoch_based_cfg
        cfg.model = dict(type='SparseToyModel')
        cfg.custom_hooks = [dict(type='ReparameterizeHook', out_dir=target)]
        runner = self.build_runner(cfg)
        with self.assertRaisesRegex(ExportError, 'did not write'):
            runner.train()
        assert runner.iter == 0
        assert open(osp.join(target, 'notes.txt')).read() == 'mine'


def test_syncbn_conversion_of_spre_blocks_is_refused_before_training():
    """Converting SpRe's two-branch BN to SyncBatchNorm (which would drop the extra branch) is
    refused in before_train, naming the conv; the unconverted block passes."""
    from types import SimpleNamespace

    def spre_block():
        block = torch.nn.Sequential()
        block.conv = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        block.bn = torch.nn.BatchNorm2d(8)
        sparsify_layer(block, 'conv', 'srste', 2, 4, norm_name='bn', rep_gamma=1.0)
        return block

    block = spre_block()
    wrapper = SimpleNamespace(optimizer=torch.optim.SGD(block.parameters(), lr=0.1))
    SparsityHook().before_train(SimpleNamespace(model=block, max_iters=8, iter=0,
                                                optim_wrapper=wrapper))
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(spre_block())
    with pytest.raises(ConfigError, match=r'conv.*SyncBatchNorm|SyncBatchNorm.*sync_bn'):
        SparsityHook().before_train(SimpleNamespace(model=converted, max_iters=8, iter=0))
