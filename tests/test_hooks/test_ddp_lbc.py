"""LBC under DDP (2 processes, gloo on CPU): once the scores freeze, DDP reduces what an SR-STE
run reduces; masks are the same on both ranks. Bytes are counted by a DDP comm hook."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # starts 2 distributed processes, twice

MODULE = '''
import hashlib
import json
import os

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, MODELS

from spre_mmdet.models import SparseResNet


@MODELS.register_module(force=True)
class DDPBackbone(BaseModel):
    def __init__(self, sparsity, data_preprocessor=None):
        super().__init__(data_preprocessor)
        torch.manual_seed(0)
        self.backbone = SparseResNet(depth=18, base_channels=8, frozen_stages=-1,
                                     norm_eval=True, sparsity=sparsity)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        inputs = torch.stack(inputs) if isinstance(inputs, list) else inputs
        out = self.backbone(inputs)[-1]
        return dict(loss=out.square().mean()) if mode == 'loss' else out


@DATASETS.register_module(force=True)
class DDPImages(Dataset):
    metainfo = dict()

    def __init__(self):
        self.images = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return dict(inputs=self.images[i])


@HOOKS.register_module(force=True)
class CountReducedBytes(Hook):
    """Bytes DDP all-reduces in each iteration, by a comm hook on whatever DDP wraps the model
    (the SparsityHook may wrap it again); each rank writes them and a digest of its masks."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.wrapped, self.state, self.bytes = None, dict(bytes=0), []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.model is not self.wrapped:
            self.wrapped = runner.model
            assert isinstance(runner.model, DistributedDataParallel)

            def count(state, bucket):
                state['bytes'] += bucket.buffer().numel() * bucket.buffer().element_size()
                return default_hooks.allreduce_hook(None, bucket)
            runner.model.register_comm_hook(self.state, count)
        self.state['bytes'] = 0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.bytes.append(self.state['bytes'])

    def after_train(self, runner):
        masks = b''.join(buf.numpy().tobytes() for name, buf in
                         runner.model.module.named_buffers() if name.endswith('.mask'))
        info = dict(bytes=self.bytes, masks=hashlib.sha256(masks).hexdigest(),
                    trainable=sum(p.numel() for p in runner.model.module.parameters()
                                  if p.requires_grad))
        with open(os.path.join(runner.work_dir, 'rank%d.json' % dist.get_rank()), 'w') as f:
            json.dump(info, f)
'''

CONFIG = '''
custom_imports = dict(imports=['ddp_lbc_module', 'spre_mmdet'], allow_failed_imports=False)
model = dict(type='DDPBackbone', sparsity=dict(learner={learner}))
train_dataloader = dict(dataset=dict(type='DDPImages'), batch_size=2, num_workers=0,
                        sampler=dict(type='DefaultSampler', shuffle=True))
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
train_cfg = dict(by_epoch=False, max_iters=6)
default_hooks = dict(logger=dict(type='LoggerHook', interval=100),
                     checkpoint=dict(type='CheckpointHook', interval=100, by_epoch=False))
custom_hooks = [dict(type='SparsityHook', log_interval=100), dict(type='CountReducedBytes')]
env_cfg = dict(dist_cfg=dict(backend='gloo'))
'''


def _run(tmp_path, repo_root, port, env, name, learner):
    cfg = tmp_path / f'{name}.py'
    cfg.write_text(textwrap.dedent(CONFIG).format(learner=learner))
    work_dir = tmp_path / name
    res = subprocess.run(
        ['bash', str(repo_root / 'tools' / 'dist_train.sh'), str(cfg), '2', '--work-dir',
         str(work_dir)], cwd=tmp_path, env=dict(env, PORT=str(port)), capture_output=True,
        text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    return [json.loads((work_dir / f'rank{r}.json').read_text()) for r in (0, 1)]


def test_frozen_lbc_scores_leave_the_reduction(tmp_path, repo_root, free_port, subprocess_env):
    (tmp_path / 'ddp_lbc_module.py').write_text(textwrap.dedent(MODULE))
    env = dict(subprocess_env, PYTHON=sys.executable)
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), env['PYTHONPATH']])
    lbc = _run(tmp_path, repo_root, free_port, env, 'lbc',
               "dict(type='LBCMask', t_i=0, t_f=3)")
    srste = _run(tmp_path, repo_root, free_port + 1 if free_port < 65000 else free_port - 1,
                 env, 'srste', "dict(type='SRSTEMask')")
    for run in (lbc, srste):
        assert run[0]['masks'] == run[1]['masks']  # the same masks on both ranks
        assert run[0]['bytes'] == run[1]['bytes']
    # the scores freeze in the refresh after iteration 2 (t_f = 3): before, DDP reduces them
    # too; from then on exactly what SR-STE reduces, its trainable parameters in float32
    before, after = lbc[0]['bytes'][:3], lbc[0]['bytes'][3:]
    assert after == srste[0]['bytes'][3:] == [4 * srste[0]['trainable']] * 3
    assert lbc[0]['trainable'] == srste[0]['trainable']
    assert all(b > after[0] for b in before)
    print(f'\nbytes all-reduced per iteration, LBC before / after t_f: {before[0]} / {after[0]}'
          f' (SR-STE {srste[0]["bytes"][0]})')
