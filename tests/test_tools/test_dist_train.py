"""2-process distributed training through tools/dist_train.sh (CPU + gloo when no CUDA)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow  # starts 2 distributed processes

TOY_MODULE = '''
import json
import os

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Dataset
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, MODELS


@MODELS.register_module(force=True)
class DistToyModel(BaseModel):
    """Linear -> SyncBN -> Linear (SyncBN exercises the CPU revert)."""

    def __init__(self, data_preprocessor=None):
        super().__init__(data_preprocessor=data_preprocessor)
        self.linear1 = nn.Linear(2, 4)
        self.bn = nn.SyncBatchNorm(4)
        self.linear2 = nn.Linear(4, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        if isinstance(inputs, list):
            inputs = torch.stack(inputs)
        out = self.linear2(self.bn(self.linear1(inputs))).squeeze(-1)
        if mode == 'loss':
            if isinstance(data_samples, list):
                data_samples = torch.stack(data_samples)
            return dict(loss=((out - data_samples) ** 2).mean())
        return out


@DATASETS.register_module(force=True)
class DistToyDataset(Dataset):
    metainfo = dict()

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.data = torch.randn(16, 2, generator=gen)
        self.label = torch.ones(16)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return dict(inputs=self.data[i], data_samples=self.label[i])


@HOOKS.register_module(force=True)
class RecordDistHook(Hook):
    """Each rank writes what it saw into work_dir/rank<r>.json."""

    def after_train(self, runner):
        model = runner.model
        info = dict(
            rank=dist.get_rank(), world_size=dist.get_world_size(),
            backend=str(dist.get_backend()), wrapper=type(model).__name__,
            device_ids=getattr(model, 'device_ids', 'n/a'),
            syncbn=any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()),
            iter=runner.iter, seen=int(runner.train_dataloader.sampler.num_samples))
        with open(os.path.join(runner.work_dir, 'rank%d.json' % info['rank']), 'w') as f:
            json.dump(info, f)
'''

TOY_CONFIG = '''
custom_imports = dict(imports=['dist_toy_module'], allow_failed_imports=False)
model = dict(type='DistToyModel')
train_dataloader = dict(
    dataset=dict(type='DistToyDataset'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_size=2,
    num_workers=0)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
train_cfg = dict(by_epoch=False, max_iters=4)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False))
custom_hooks = [dict(type='RecordDistHook')]
# mmdet's default; on a CPU-only machine spre_mmdet switches it to gloo
env_cfg = dict(dist_cfg=dict(backend='nccl'))
'''


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
def test_dist_train_two_processes(tmp_path, repo_root, free_port, subprocess_env):
    (tmp_path / 'dist_toy_module.py').write_text(textwrap.dedent(TOY_MODULE))
    cfg = tmp_path / 'dist_toy_cfg.py'
    cfg.write_text(textwrap.dedent(TOY_CONFIG))
    work_dir = tmp_path / 'work_dir'

    env = dict(subprocess_env)
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), env['PYTHONPATH']])
    env['PORT'] = str(free_port)
    env['PYTHON'] = sys.executable  # same interpreter for torchrun and the workers
    res = subprocess.run(
        ['bash', str(repo_root / 'tools' / 'dist_train.sh'), str(cfg), '2', '--work-dir',
         str(work_dir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-5000:]

    infos = [json.loads((work_dir / f'rank{r}.json').read_text()) for r in (0, 1)]
    expected_backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    for rank, info in enumerate(infos):
        assert info['rank'] == rank
        assert info['world_size'] == 2
        assert info['backend'] == expected_backend
        assert info['wrapper'] == 'MMDistributedDataParallel'
        assert info['iter'] == 4
        assert info['seen'] == 8  # DefaultSampler shards the 16 samples over 2 ranks
        if not torch.cuda.is_available():
            assert info['device_ids'] is None
            assert info['syncbn'] is False
    assert (work_dir / 'iter_4.pth').is_file()
    assert 'Distributed training: True' in out
    ckpt = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 4
