"""EpochSeedHook on mmengine's toy runner: each epoch starts from (seed, epoch) alone."""
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.testing import RunnerTestCase

from spre_mmdet.errors import ConfigError
from spre_mmdet.hooks import epoch_seed


class DrawAtEpochStart(Hook):
    """Records one draw of each generator at the start of every epoch."""

    priority = 'LOWEST'

    def __init__(self):
        self.draws = []

    def before_train_epoch(self, runner):
        self.draws.append((runner.epoch, random.random(), float(np.random.rand()),
                           float(torch.rand(1))))


class TestEpochSeedHook(RunnerTestCase):

    def setUp(self):
        super().setUp()
        self.epoch_based_cfg.env_cfg = dict(dist_cfg=dict(backend='gloo'))
        self.epoch_based_cfg.custom_hooks = [dict(type='EpochSeedHook')]
        self.epoch_based_cfg.randomness = dict(seed=7)

    def test_every_generator_starts_each_epoch_from_seed_and_epoch(self):
        """Python, numpy and torch draws at an epoch's start depend on (seed, epoch) only."""
        recorder = DrawAtEpochStart()
        runner = self.build_runner(self.epoch_based_cfg)
        runner.register_hook(recorder)
        runner.train()
        assert [d[0] for d in recorder.draws] == [0, 1]
        for epoch, py, npy, pt in recorder.draws:
            seed = epoch_seed(7, epoch)
            assert py == random.Random(seed).random()
            assert npy == float(np.random.RandomState(seed).rand())
            assert pt == float(torch.rand(1, generator=torch.Generator().manual_seed(seed)))
        assert recorder.draws[0][1:] != recorder.draws[1][1:]

    def test_persistent_workers_are_refused_before_training(self):
        """Persistent data-loader workers (their state escapes checkpoints) are refused."""
        cfg = self.epoch_based_cfg
        cfg.train_dataloader.num_workers = 1
        cfg.train_dataloader.persistent_workers = True
        runner = self.build_runner(cfg)
        with self.assertRaisesRegex(ConfigError, 'persistent_workers=False'):
            runner.train()
        assert runner.iter == 0

    def test_iteration_based_loop_is_refused(self):
        """An iteration-based loop (no epoch boundaries to reseed at) is refused."""
        cfg = self.iter_based_cfg
        cfg.env_cfg = dict(dist_cfg=dict(backend='gloo'))
        cfg.custom_hooks = [dict(type='EpochSeedHook')]
        runner = self.build_runner(cfg)
        with self.assertRaisesRegex(ConfigError, 'EpochBasedTrainLoop'):
            runner.train()
