"""EpochSeedHook on mmengine's toy runner: each epoch starts from (seed, epoch) alone, in the
main process and in the data-loader workers, persistent or not, so resume is exact."""
import copy
import os.path as osp
import random

import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.hooks import Hook
from mmengine.registry import DATASETS
from mmengine.testing import RunnerTestCase
from torch.utils.data import Dataset

from spre_mmdet.errors import ConfigError
from spre_mmdet.hooks import epoch_seed
from spre_mmdet.hooks.epoch_seed_hook import EpochSeededCompose


def _release_workers(dataloader):
    """Stops a finished run's persistent workers now. Left to the cyclic garbage collector (the
    runner lives in reference cycles), the worker queues' finalizers run before the iterator's
    ``__del__`` can signal the workers, and each worker's join then waits out its 5 s timeout
    in whichever later test triggers the collection."""
    iterator = getattr(dataloader, '_iterator', None)
    if iterator is not None:
        iterator._shutdown_workers()


class DrawAtEpochStart(Hook):
    """Records one draw of each generator at the start of every epoch."""

    priority = 'LOWEST'

    def __init__(self):
        self.draws = []

    def before_train_epoch(self, runner):
        self.draws.append((runner.epoch, random.random(), float(np.random.rand()),
                           float(torch.rand(1))))


class RecordBatches(Hook):
    """Records every training batch and one main-process draw after it, by (epoch, iteration)."""

    def __init__(self):
        self.batches = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.batches[(runner.epoch, batch_idx)] = (
            torch.stack(data_batch['inputs']).clone(), float(torch.rand(1)))


class Jitter:
    """An augmentation drawing from all three generators of the process it runs in."""

    def __call__(self, results):
        noise = random.random() + float(np.random.rand()) + torch.rand(2)
        results['inputs'] = results['inputs'] + noise
        return results


class JitteredToyDataset(Dataset):
    """mmengine's toy data through a pipeline with a random augmentation."""

    METAINFO = dict()
    data = torch.arange(24, dtype=torch.float32).reshape(12, 2)

    def __init__(self):
        self.pipeline = Compose([Jitter()])

    @property
    def metainfo(self):
        return self.METAINFO

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.pipeline(dict(inputs=self.data[index].clone(), data_samples=torch.ones(())))


class TestEpochSeedHook(RunnerTestCase):

    def setUp(self):
        super().setUp()
        DATASETS.register_module(module=JitteredToyDataset, force=True)
        self.epoch_based_cfg.env_cfg = dict(dist_cfg=dict(backend='gloo'))
        self.epoch_based_cfg.custom_hooks = [dict(type='EpochSeedHook')]
        self.epoch_based_cfg.randomness = dict(seed=7)

    def tearDown(self):
        DATASETS.module_dict.pop('JitteredToyDataset', None)
        super().tearDown()

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

    def _train(self, name, persistent=True, hook=True, resume_from=None):
        """Train 3 epochs with 2 workers; the batches seen and the final weights."""
        cfg = copy.deepcopy(self.epoch_based_cfg)
        cfg.work_dir = osp.join(self.temp_dir.name, name)
        cfg.train_cfg.max_epochs = 3
        cfg.train_dataloader.update(dataset=dict(type='JitteredToyDataset'), num_workers=2,
                                    persistent_workers=persistent)
        if not hook:
            cfg.custom_hooks = []
        if resume_from:
            cfg.load_from, cfg.resume = resume_from, True
        recorder = RecordBatches()
        runner = self.build_runner(cfg)
        runner.register_hook(recorder)
        runner.train()
        _release_workers(runner.train_dataloader)
        return recorder.batches, runner.model.state_dict()

    def _assert_same_from_epoch_1(self, full, resumed):
        later = sorted(key for key in full[0] if key[0] >= 1)
        assert later and sorted(resumed[0]) == later
        for key in later:
            assert torch.equal(full[0][key][0], resumed[0][key][0]), key
            assert full[0][key][1] == resumed[0][key][1], key
        for key, value in full[1].items():
            assert torch.equal(value, resumed[1][key]), key

    def test_resume_with_persistent_workers_equals_the_uninterrupted_run(self):
        """With persistent workers (created once per run), a run resumed from its epoch-1
        checkpoint sees the same augmented batches, draws the same numbers in the main process
        and ends with the same weights as the uninterrupted run; and workers re-created each
        epoch draw what persistent ones draw."""
        full = self._train('full')
        resumed = self._train('resumed', resume_from=osp.join(self.temp_dir.name, 'full',
                                                               'epoch_1.pth'))
        self._assert_same_from_epoch_1(full, resumed)
        restarted = self._train('restarted', persistent=False)
        assert sorted(restarted[0]) == sorted(full[0])
        for key, (batch, draw) in full[0].items():
            assert torch.equal(batch, restarted[0][key][0]) and draw == restarted[0][key][1]
        epochs = [torch.cat([b for (e, _), (b, _) in sorted(full[0].items()) if e == epoch])
                  for epoch in range(3)]
        assert not torch.equal(epochs[1], epochs[2])  # each epoch augments anew

    def test_without_the_hook_persistent_workers_make_resume_diverge(self):
        """The test above is sensitive: without the hook the resumed run's workers start over
        and its batches differ from the uninterrupted run's."""
        full = self._train('full', hook=False)
        resumed = self._train('resumed', hook=False, resume_from=osp.join(
            self.temp_dir.name, 'full', 'epoch_1.pth'))
        assert any(not torch.equal(full[0][key][0], resumed[0][key][0]) for key in resumed[0])

    def test_the_train_pipelines_are_reseeded_and_a_dataset_without_one_is_refused(self):
        """With workers, the train dataset's pipeline reseeds them; a dataset without an
        mmengine pipeline cannot be reseeded and is refused before training."""
        cfg = copy.deepcopy(self.epoch_based_cfg)
        cfg.train_dataloader.update(dataset=dict(type='JitteredToyDataset'), num_workers=1)
        cfg.train_cfg.max_epochs = 1
        runner = self.build_runner(cfg)
        runner.train()
        assert isinstance(runner.train_dataloader.dataset.pipeline, EpochSeededCompose)
        cfg = self.epoch_based_cfg
        cfg.train_dataloader.num_workers = 1
        runner = self.build_runner(cfg)
        with self.assertRaisesRegex(ConfigError, 'no mmengine Compose pipeline'):
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
