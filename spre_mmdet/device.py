"""Where a run trains: on the GPUs the user has, or on the CPU only when asked for.

mmengine trains on CPU whenever ``torch.cuda.is_available()`` is False. On a GPU machine that
happens when the NVIDIA driver is older than the CUDA build of torch needs, and an 8-GPU job
would then run as 8 CPU processes, hours per iteration, with nothing but a warning.
:func:`check_training_device` refuses that before anything is built; CPU training stays
possible when asked for with ``SPRE_MMDET_CPU=1`` (the tests and CPU-only users), and a run on a
machine without NVIDIA devices that asks for no GPU backend proceeds on CPU as before.
"""
import os
import re
import shutil
import subprocess
from typing import Optional

import torch

from .errors import StackError

__all__ = ['CPU_ENV', 'check_training_device', 'cpu_requested', 'nvidia_driver_version']

#: set to 1 to train on the CPU on purpose (distributed runs then use gloo)
CPU_ENV = 'SPRE_MMDET_CPU'

#: the oldest Linux driver each CUDA major version of torch runs on (NVIDIA's release notes)
MIN_DRIVER = {'13': '580', '12': '525', '11': '450'}


def cpu_requested() -> bool:
    """Whether the user asked for CPU training (``SPRE_MMDET_CPU=1``)."""
    return os.environ.get(CPU_ENV, '') == '1'


def nvidia_driver_version() -> Optional[str]:
    """The NVIDIA driver version of this machine, or ``None`` without an NVIDIA driver
    (``nvidia-smi``, else the kernel module's ``/proc/driver/nvidia/version``)."""
    smi = shutil.which('nvidia-smi')
    if smi:
        try:
            out = subprocess.run([smi, '--query-gpu=driver_version', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=20)
            version = out.stdout.strip().splitlines()[0].strip() if out.stdout.strip() else ''
            if version:
                return version
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open('/proc/driver/nvidia/version') as f:
            found = re.search(r'Kernel Module\s+([\d.]+)', f.read())
        return found.group(1) if found else 'unknown'
    except OSError:
        return None


def _accelerator_available() -> bool:
    if torch.cuda.is_available():
        return True
    try:
        from mmengine.device import is_mlu_available, is_musa_available, is_npu_available
        return bool(is_mlu_available() or is_npu_available() or is_musa_available())
    except Exception:  # noqa: BLE001
        return False


def _why_no_cuda() -> str:
    if torch.version.cuda is None:
        return f'torch {torch.__version__} is a CPU-only build'
    if os.environ.get('CUDA_VISIBLE_DEVICES', None) == '':
        return 'CUDA_VISIBLE_DEVICES is empty, which hides every GPU'
    return 'no NVIDIA GPU or driver was found on this machine'


def check_training_device(distributed: bool, backend: Optional[str] = None) -> None:
    """Refuse a run that would train on CPU although it asked for GPUs.

    Args:
        distributed: a launcher run (``--launcher pytorch|slurm``, ``dist_train.sh``).
        backend: its ``torch.distributed`` backend (mmengine's default is ``'nccl'``).

    Raises:
        StackError: no usable CUDA, ``SPRE_MMDET_CPU`` is not 1, and either this machine has an
            NVIDIA driver (torch cannot use it: most likely the driver is older than torch's
            CUDA build needs; both versions are named) or a distributed run asked for nccl.
    """
    if _accelerator_available() or cpu_requested():
        return
    driver = nvidia_driver_version()
    opt_in = (f'To train on the CPU on purpose, set {CPU_ENV}=1 (distributed runs then use '
              'the gloo backend).')
    if driver is not None:
        needs = MIN_DRIVER.get((torch.version.cuda or '').split('.')[0])
        raise StackError(
            f'This machine has an NVIDIA driver ({driver}) but torch {torch.__version__} '
            f'(built for CUDA {torch.version.cuda}) cannot use its GPUs, so the run would '
            f'train on the CPU. The likely cause is a driver older than CUDA '
            f'{torch.version.cuda} needs' + (f' (driver {needs} or newer)' if needs else '') +
            '. Fix: update the NVIDIA driver, or install a torch build for the CUDA version '
            f'the driver supports (see docs/gpu.md). {opt_in}')
    if distributed and backend == 'nccl':
        raise StackError(
            f'This distributed run asks for the nccl backend (GPUs), but torch sees no CUDA '
            f'device: {_why_no_cuda()}. Fix: run it on a GPU machine. {opt_in}')
