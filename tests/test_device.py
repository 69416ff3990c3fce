"""No silent CPU training: a run that asked for GPUs and finds no usable CUDA is refused before
anything is built, naming the cause; CPU training stays possible when asked for."""
import os
import stat
import subprocess
import sys

import pytest
import torch

from spre_mmdet.device import check_training_device, nvidia_driver_version
from spre_mmdet.errors import StackError

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason='checks a machine whose '
                                'torch sees no CUDA')


@pytest.fixture
def no_opt_in(monkeypatch):
    monkeypatch.delenv('SPRE_MMDET_CPU', raising=False)


@pytest.fixture
def old_driver(tmp_path, monkeypatch):
    """A machine with an NVIDIA driver torch cannot use: a stand-in nvidia-smi on PATH."""
    smi = tmp_path / 'nvidia-smi'
    smi.write_text('#!/bin/sh\necho 470.82.01\n')
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('PATH', f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    return '470.82.01'


def test_gpu_machine_with_an_old_driver_is_refused_naming_both_versions(no_opt_in, old_driver):
    assert nvidia_driver_version() == old_driver
    for distributed, backend in ((False, None), (True, 'nccl'), (True, 'gloo')):
        with pytest.raises(StackError) as error:
            check_training_device(distributed, backend)
        message = str(error.value)
        assert old_driver in message and str(torch.version.cuda) in message
        assert 'SPRE_MMDET_CPU=1' in message


def test_nccl_without_cuda_is_refused(no_opt_in):
    if nvidia_driver_version() is not None:
        pytest.skip('this machine has an NVIDIA driver')
    with pytest.raises(StackError, match='nccl'):
        check_training_device(True, 'nccl')
    check_training_device(True, 'gloo')  # gloo asked for, no GPU here: a CPU run
    check_training_device(False)  # the plain CPU run (the demo)


def test_cpu_training_when_asked_for(old_driver, monkeypatch):
    monkeypatch.setenv('SPRE_MMDET_CPU', '1')
    check_training_device(True, 'nccl')
    check_training_device(False)


@pytest.mark.slow
def test_dist_train_refuses_before_building_anything(repo_root, tmp_path, free_port):
    """tools/dist_train.sh 2 of a COCO config (nccl) without CUDA and without SPRE_MMDET_CPU
    stops before building anything, naming the fix."""
    env = {k: v for k, v in os.environ.items() if k != 'SPRE_MMDET_CPU'}
    env.update(PORT=str(free_port), PYTHON=sys.executable)
    work = tmp_path / 'work'
    out = subprocess.run(['bash', 'tools/dist_train.sh', 'configs/mask_rcnn_r50_srste_2x4.py',
                          '2', '--work-dir', str(work)], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert 'SPRE_MMDET_CPU=1' in out.stderr + out.stdout
    assert not list(work.rglob('*.pth'))
