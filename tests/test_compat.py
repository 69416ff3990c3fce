"""spre_mmdet.compat's patches (safe checkpoint loading in mmengine, CPU DDP, torchvision://),
the safe loader behind them, and the tools' error reporting."""
import copy
import gc
import os
import os.path as osp
import textwrap

import pytest
import torch
import torch.nn as nn

import spre_mmdet  # noqa: F401
from spre_mmdet import cli, compat
from spre_mmdet.checkpoint import safe_load
from spre_mmdet.errors import (DatasetError, DatasetNotFoundError, TorchvisionUnavailableError,
                               UnsafeCheckpointError)
from tool_process import run_tool_process

from mmengine.runner import Runner
from mmengine.runner.checkpoint import (CheckpointLoader, _load_checkpoint,
                                        load_checkpoint)


# ----------------------------------------------------------------------------- helpers
class _Boom:
    """Unpickling this runs ``os.system('touch <marker>')``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


class _Custom:
    """A harmless custom class: still not on the allowlist."""

    def __init__(self, value=1):
        self.value = value


def _toy_iter_cfg(case, work_dir, max_iters=4, interval=2):
    cfg = copy.deepcopy(case.iter_based_cfg)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'compat_{osp.basename(str(work_dir))}'
    cfg.train_cfg = dict(by_epoch=False, max_iters=max_iters, val_interval=1000)
    cfg.optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
    cfg.default_hooks = dict(
        logger=dict(type='LoggerHook', interval=1),
        checkpoint=dict(type='CheckpointHook', interval=interval, by_epoch=False))
    cfg.env_cfg = dict(dist_cfg=dict(backend='gloo'))
    return cfg


@pytest.fixture
def trained_ckpt(toy_runner_case, tmp_path):
    """A real mmengine runner checkpoint after 2 of 4 iterations."""
    cfg = _toy_iter_cfg(toy_runner_case, tmp_path / 'train')
    runner = Runner.from_cfg(cfg)
    runner.train()
    ckpt = tmp_path / 'train' / 'iter_2.pth'
    assert ckpt.is_file()
    return ckpt


@pytest.fixture
def hostile_ckpts(tmp_path):
    marker = tmp_path / 'PWNED'
    boom = tmp_path / 'boom.pth'
    torch.save({'state_dict': {'linear1.weight': torch.zeros(2, 2)}, 'meta': _Boom(marker)},
               boom)
    custom = tmp_path / 'custom.pth'
    torch.save({'state_dict': {'linear1.weight': torch.zeros(2, 2)}, 'meta': _Custom(3)},
               custom)
    return marker, boom, custom


# ----------------------------------------------------------------- safe checkpoint loading
def test_runner_checkpoint_loads_weights_only(trained_ckpt):
    # nothing outside the allowlist, and plain torch.load(weights_only=True) works
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(trained_ckpt)) == []
    ckpt = torch.load(trained_ckpt, map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 2
    hub = ckpt['message_hub']
    lr = hub['log_scalars']['train/lr']
    assert lr.mean() == pytest.approx(0.1)
    assert 'mean' in lr._statistics_methods
    # and through mmengine's loader
    assert _load_checkpoint(str(trained_ckpt), map_location='cpu')['meta']['iter'] == 2


def test_resume_restores_iter_and_optimizer(toy_runner_case, trained_ckpt, tmp_path):
    saved = torch.load(trained_ckpt, map_location='cpu', weights_only=True)
    cfg = _toy_iter_cfg(toy_runner_case, tmp_path / 'resume')
    cfg.experiment_name = 'compat_resume_2'
    cfg.resume = True
    cfg.load_from = str(trained_ckpt)
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    assert runner.iter == 2
    state = runner.optim_wrapper.state_dict()['state']
    assert state, 'optimizer state (momentum buffers) not restored'
    for key, value in saved['optimizer']['state'].items():
        torch.testing.assert_close(state[key]['momentum_buffer'], value['momentum_buffer'])
    for name, param in runner.model.state_dict().items():
        torch.testing.assert_close(param, saved['state_dict'][name])
    assert runner.message_hub.get_scalar('train/lr').current() == pytest.approx(0.1)
    runner.train()  # continues from iter 2 to 4
    assert runner.iter == 4
    assert (tmp_path / 'resume' / 'iter_4.pth').is_file()


def test_hostile_checkpoint_refused_everywhere(toy_runner_case, hostile_ckpts, tmp_path):
    marker, boom, custom = hostile_ckpts
    model = nn.Linear(2, 2)

    # low level loader, used by every path below
    with pytest.raises(UnsafeCheckpointError) as info:
        _load_checkpoint(str(boom), map_location='cpu')
    msg = str(info.value)
    assert 'system' in msg and 'add_safe_globals' in msg and safe_load.TRUST_ENV in msg
    assert any('system' in g for g in info.value.unsafe_globals)

    with pytest.raises(UnsafeCheckpointError, match='_Custom'):
        load_checkpoint(model, str(custom), map_location='cpu')

    # init_cfg Pretrained
    from mmengine.model.weight_init import PretrainedInit
    with pytest.raises(UnsafeCheckpointError):
        PretrainedInit(checkpoint=str(boom))(model)

    # runner: load_from (what tools/test.py does with CKPT) and --resume
    for resume in (False, True):
        cfg = _toy_iter_cfg(toy_runner_case, tmp_path / f'hostile_{resume}')
        cfg.experiment_name = f'compat_hostile_{resume}'
        cfg.load_from = str(boom)
        cfg.resume = resume
        runner = Runner.from_cfg(cfg)
        with pytest.raises(UnsafeCheckpointError):
            runner.load_or_resume()

    assert not marker.exists(), 'hostile checkpoint code was executed'


def test_opt_in_paths_for_trusted_files(hostile_ckpts, monkeypatch):
    _, _, custom = hostile_ckpts
    # explicit allowlisting keeps weights_only=True
    with torch.serialization.safe_globals([_Custom]):
        assert _load_checkpoint(str(custom), map_location='cpu')['meta'].value == 3
    # conscious full-pickle opt-in
    monkeypatch.setenv(safe_load.TRUST_ENV, '1')
    with pytest.warns(UserWarning, match=safe_load.TRUST_ENV):
        assert _load_checkpoint(str(custom), map_location='cpu')['meta'].value == 3
    monkeypatch.delenv(safe_load.TRUST_ENV)
    with pytest.raises(UnsafeCheckpointError):
        _load_checkpoint(str(custom), map_location='cpu')


def test_restricted_getattr_only_for_history_buffer():
    import pickle
    from mmengine.logging.history_buffer import HistoryBuffer
    assert safe_load._restricted_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for obj, name in ((HistoryBuffer, '__init__'), (os, 'system'), (HistoryBuffer, 'nope')):
        with pytest.raises(pickle.UnpicklingError):
            safe_load._restricted_getattr(obj, name)


# ------------------------------------------------------------------------- torchvision://
def test_torchvision_scheme_clear_error(monkeypatch):
    """Without an importable torchvision, torchvision:// names both fixes (install it, or a
    local init_cfg.checkpoint) instead of failing deep inside mmengine."""
    import importlib
    real_import = importlib.import_module

    def no_torchvision(name, *args, **kwargs):
        if name.split('.')[0] == 'torchvision':
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(compat.importlib, 'import_module', no_torchvision)
    with pytest.raises(TorchvisionUnavailableError) as info:
        CheckpointLoader.load_checkpoint('torchvision://resnet50', map_location='cpu')
    msg = str(info.value)
    assert 'install torchvision' in msg and 'init_cfg.checkpoint' in msg
    from mmengine.model.weight_init import PretrainedInit
    with pytest.raises(TorchvisionUnavailableError):
        PretrainedInit(checkpoint='torchvision://resnet18')(nn.Linear(2, 2))


# ------------------------------------------------------------------------------ CPU DDP
def test_cpu_ddp_wrapper_drops_device_ids_and_syncbn(free_port, monkeypatch):
    import torch.distributed as dist
    from mmengine.dist import utils as dist_utils
    from mmengine.model import MMDistributedDataParallel
    if torch.cuda.is_available():
        pytest.skip('checks the CPU-only path')
    for key, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                           MASTER_PORT=str(free_port)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv('SPRE_MMDET_CPU', '1')  # CPU training asked for: nccl becomes gloo
    dist_utils.init_dist('pytorch', backend='nccl')  # mmengine's default
    ddp = None
    try:
        assert dist.get_backend() == 'gloo'
        model = nn.Sequential(nn.Linear(2, 4), nn.SyncBatchNorm(4))
        with pytest.warns(UserWarning, match='SyncBatchNorm'):
            ddp = MMDistributedDataParallel(module=model, device_ids=[0])
        assert ddp.device_ids is None
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in ddp.modules())
        ddp(torch.randn(3, 2)).sum().backward()
    finally:
        # DDP's reducer holds the process group: release it while the group is alive. Freed
        # after destroy_process_group, the gloo group's destructor can hang joining its threads.
        del ddp
        gc.collect()
        dist.destroy_process_group()


# ------------------------------------------------------------------ errors in the tools
def test_check_dataset_paths(tmp_path):
    """A missing dataset folder or annotation file, and an empty, '{}', broken or non-COCO
    annotation file, are refused before training, naming the file and the fix."""
    from mmengine.config import Config
    root = tmp_path / 'coco'
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='RepeatDataset', times=2,
        dataset=dict(type='CocoDataset', data_root=str(root) + '/',
                     ann_file='annotations/train.json')))))
    with pytest.raises(DatasetNotFoundError, match='make_toy_coco'):
        cli.check_dataset_paths(cfg, ['train_dataloader'])
    (root / 'annotations').mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match='train.json'):
        cli.check_dataset_paths(cfg, ['train_dataloader'])
    ann = root / 'annotations' / 'train.json'
    for content, problem in (('', 'empty'), ('{}', "no 'images', 'annotations', 'categories'"),
                             ('{"images": [', 'not valid JSON'), ('[]', 'JSON list')):
        ann.write_text(content)
        with pytest.raises(DatasetError, match='train.json') as info:
            cli.check_dataset_paths(cfg, ['train_dataloader'])
        assert problem in str(info.value) and 'make_toy_coco' in str(info.value)
    ann.write_text('{"images": [], "annotations": [], "categories": []}')
    cli.check_dataset_paths(cfg, ['train_dataloader', 'val_dataloader'])


def _write_tool_cfg(tmp_path, **extra):
    module = tmp_path / 'compat_toy_module.py'
    module.write_text(textwrap.dedent('''
        from mmengine.testing.runner_test_case import ToyDataset, ToyMetric, ToyModel
        from mmengine.registry import DATASETS, METRICS, MODELS
        MODELS.register_module(module=ToyModel, force=True)
        DATASETS.register_module(module=ToyDataset, force=True)
        METRICS.register_module(module=ToyMetric, force=True)
    '''))
    lines = [
        "custom_imports = dict(imports=['compat_toy_module'], allow_failed_imports=False)",
        "model = dict(type='ToyModel')",
        "train_dataloader = dict(dataset=dict(type='ToyDataset'), batch_size=3, num_workers=0,"
        " sampler=dict(type='DefaultSampler', shuffle=True))",
        "test_dataloader = dict(dataset=dict(type='ToyDataset'), batch_size=3, num_workers=0,"
        " sampler=dict(type='DefaultSampler', shuffle=False))",
        "test_evaluator = dict(type='ToyMetric')",
        "test_cfg = dict()",
        "optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))",
        "train_cfg = dict(by_epoch=False, max_iters=2)",
    ] + [f'{k} = {v!r}' for k, v in extra.items()]
    path = tmp_path / 'tool_cfg.py'
    path.write_text('\n'.join(lines) + '\n')
    return path


@pytest.mark.slow  # runs the tools in processes of their own
def test_tools_report_user_errors_without_traceback(hostile_ckpts, tmp_path, repo_root,
                                                    subprocess_env):
    marker, boom, _ = hostile_ckpts
    env = dict(subprocess_env)
    env['PYTHONPATH'] = os.pathsep.join([str(tmp_path), env['PYTHONPATH']])
    cfg = _write_tool_cfg(tmp_path)
    # tools/test.py with a hostile CKPT
    res = run_tool_process([repo_root / 'tools' / 'test.py', cfg, boom, '--work-dir',
                            tmp_path / 'wd_test'], env, tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'Refusing to load checkpoint' in res.stderr
    assert 'Traceback' not in res.stderr
    assert not marker.exists()
    # tools/train.py with a missing dataset
    cfg = _write_tool_cfg(tmp_path, train_dataloader=dict(
        dataset=dict(type='CocoDataset', data_root=str(tmp_path / 'no_such_coco') + '/',
                     ann_file='annotations/instances_train.json')))
    res = run_tool_process([repo_root / 'tools' / 'train.py', cfg, '--work-dir',
                            tmp_path / 'wd'], env, tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert 'no_such_coco' in res.stderr and 'python tools/make_toy_coco.py' in res.stderr
    assert 'Traceback' not in res.stderr
