"""spre_mmdet.environment: the record of what a figure was measured in (tools/demo.py writes it)."""
import json
from importlib import metadata

import numpy as np
import torch

from spre_mmdet import allocator
from spre_mmdet.environment import (DISTRIBUTIONS, PACKAGE_ENV_VARS, THREAD_ENV_VARS,
                                    collect_environment, write_environment)


def test_collect_environment_fields(monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
    env = collect_environment()
    for key in ('python', 'platform', 'machine', 'cpu', 'torch', 'mmcv', 'mmengine', 'mmdet',
                'numpy', 'opencv', 'pycocotools', 'distributions', 'env'):
        assert key in env, key
    assert env['torch']['version'] == torch.__version__
    assert env['torch']['cuda_build'] == torch.version.cuda
    assert env['torch']['num_threads'] == torch.get_num_threads()
    assert env['numpy'] == np.__version__
    assert env['mmcv']['version'] is not None
    assert env['opencv']['version'] is not None
    assert env['cpu']['model']
    assert set(env['distributions']) == set(DISTRIBUTIONS)
    assert env['distributions']['torch'] == metadata.version('torch')
    assert env['distributions']['mmdet'] == '3.3.0'
    # exactly one distribution provides cv2 in a clean install; record them all
    assert any(env['distributions'][d] for d in DISTRIBUTIONS if d.startswith('opencv'))
    assert set(env['env']) == set(THREAD_ENV_VARS + PACKAGE_ENV_VARS)
    assert env['env']['OMP_NUM_THREADS'] == '3'
    assert env['env']['MKL_NUM_THREADS'] is None
    json.dumps(env)  # serialisable as is


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


def test_the_malloc_setting_and_the_kernel_switch_are_recorded(monkeypatch):
    """The record says what the allocator module set in this process (or None) and carries
    the package's own switches (SPRE_MMDET_NATIVE, SPRE_MMDET_MALLOC, glibc's MALLOC_*_)."""
    monkeypatch.setattr(allocator, '_applied', None)
    monkeypatch.setenv('SPRE_MMDET_NATIVE', '0')
    monkeypatch.delenv('MALLOC_TRIM_THRESHOLD_', raising=False)
    env = collect_environment()
    assert env['malloc'] is None
    assert env['env']['SPRE_MMDET_NATIVE'] == '0' and env['env']['MALLOC_TRIM_THRESHOLD_'] is None
    monkeypatch.setattr(allocator, '_applied', 'glibc 2.36 malloc: mmap threshold 32 MiB')
    assert collect_environment()['malloc'] == 'glibc 2.36 malloc: mmap threshold 32 MiB'
