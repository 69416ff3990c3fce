"""spre_mmdet.environment: the one record of what a figure was measured in (tools/demo.py, the
sweep, the trace, the benchmarks and the GPU check write it)."""
import json
from importlib import metadata

import numpy as np
import torch
from mmengine.utils.dl_utils import collect_env

from spre_mmdet.environment import (DISTRIBUTIONS, ENV_VARS, collect_environment, summary_line,
                                    write_environment)


def test_collect_environment_fields(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
    env = collect_environment()
    # built on mmengine's record: its entries are all there (but the RNG state, not an
    # environment), with the same values
    mmengine_env = collect_env()
    assert set(mmengine_env) - set(env) == {'numpy_random_seed'}
    for key in ('Python', 'PyTorch', 'MMEngine', 'GCC', 'PyTorch compiling details'):
        assert env[key] == mmengine_env[key], key
    # and what the figures depend on that mmengine leaves out
    assert env['torch']['version'] == torch.__version__
    assert env['torch']['cuda_build'] == torch.version.cuda
    assert env['threads']['torch'] == torch.get_num_threads()
    assert env['threads']['torch_interop'] == torch.get_num_interop_threads()
    assert env['numpy'] == np.__version__
    assert env['pycocotools'] == metadata.version('pycocotools')
    assert env['mmdet'] == '3.3.0'
    assert env['mmcv']['version'] is not None and isinstance(env['mmcv']['ops'], bool)
    assert env['opencv'] is not None and env['threads']['opencv'] is not None
    assert env['cpu']['model'] and env['cpu']['capability']
    assert set(env['distributions']) == set(DISTRIBUTIONS)
    assert env['distributions']['torch'] == metadata.version('torch')
    # exactly one distribution provides cv2 in a clean install; record them all
    assert any(env['distributions'][d] for d in DISTRIBUTIONS if d.startswith('opencv'))
    assert set(env['env']) == set(ENV_VARS)
    assert env['env']['OMP_NUM_THREADS'] == '3'
    assert env['env']['MKL_NUM_THREADS'] is None
    assert 'device' not in env
    assert (env['cuda'] is None) == (not torch.cuda.is_available())
    json.dumps(env)  # serialisable as is


def test_the_device_and_the_summary_line():
    env = collect_environment(device='cpu')
    assert env['device'] == 'cpu'
    line = summary_line(env)
    assert f'torch {torch.__version__} ({torch.get_num_threads()} thread' in line
    assert env['cpu']['model'] in line and 'mmdet 3.3.0' in line


def test_the_cuda_block_on_a_fake_gpu(monkeypatch):
    """With CUDA: each device's name, capability and whether it has 2:4 sparse tensor cores,
    and the CUDA libraries (here a fake sm75 and sm90 pair, no nvidia-smi)."""
    from types import SimpleNamespace

    from spre_mmdet import environment
    props = [SimpleNamespace(name='Old', major=7, minor=5, total_memory=16 << 30,
                             multi_processor_count=40, L2_cache_size=4 << 20),
             SimpleNamespace(name='New', major=9, minor=0, total_memory=141 << 30,
                             multi_processor_count=132, L2_cache_size=60 << 20)]
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'get_device_properties', lambda i: props[i])
    monkeypatch.setattr(torch.backends.cudnn, 'version', lambda: 91000)
    monkeypatch.setattr(environment, 'nvidia_smi', lambda: dict(driver_version='580.1'))
    monkeypatch.setattr(environment, '_mmengine_record', lambda: {})
    env = collect_environment(device='cuda:1')
    cuda = env['cuda']
    assert [d['name'] for d in cuda['devices']] == ['Old', 'New']
    assert [d['capability'] for d in cuda['devices']] == ['7.5', '9.0']
    assert [d['sparse_tensor_cores'] for d in cuda['devices']] == [False, True]
    assert cuda['driver'] == '580.1' and cuda['cudnn'] == 91000
    assert isinstance(cuda['cusparselt_available'], bool)
    assert env['device'] == 'cuda:1'
    assert 'New sm9.0' in summary_line(env) and 'driver 580.1' in summary_line(env)
    json.dumps(env)


def test_write_environment(tmp_path):
    """The JSON written is the collected record."""
    path = tmp_path / 'sub' / 'environment.json'
    env = write_environment(str(path))
    assert json.loads(path.read_text()) == json.loads(json.dumps(env))


def test_write_environment_records_the_extra_entries(tmp_path):
    """Extra entries (the sweep's threads per run) are written beside the collected ones."""
    path = tmp_path / 'environment.json'
    write_environment(str(path), threads_per_run=1, runs_at_a_time=2)
    written = json.loads(path.read_text())
    assert (written['threads_per_run'], written['runs_at_a_time']) == (1, 2)
    assert written['torch']['version'] and written['numpy']
