"""What a result was measured in: package versions, torch build, threads, CPU.

Training from scratch on CPU is bit-exact only for a fixed software stack, thread count and CPU
instruction set (docs/reproducibility.md): a figure without this record cannot be compared.
:func:`collect_environment` gathers it as a JSON-serialisable dict and
:func:`write_environment` stores it (``tools/demo.py`` writes ``environment.json`` next to its
results).

mmengine's ``collect_env`` is not used: it runs compilers in subprocesses and leaves out
numpy, pycocotools, the distribution that provides ``cv2`` and the thread settings, which are
exactly what the toy figures depend on.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
from importlib import metadata
from typing import Any, Dict, Optional

from . import allocator

__all__ = ['DISTRIBUTIONS', 'THREAD_ENV_VARS', 'PACKAGE_ENV_VARS', 'collect_environment',
           'write_environment']

#: Installed distributions whose version is recorded (``None`` when not installed). Several
#: opencv distributions provide the same ``cv2`` module; all are listed so a mix shows up.
DISTRIBUTIONS = (
    'torch', 'torchvision', 'mmcv', 'mmcv-lite', 'mmengine', 'mmdet', 'mmpretrain', 'numpy',
    'opencv-python', 'opencv-python-headless', 'opencv-contrib-python',
    'opencv-contrib-python-headless', 'pycocotools', 'scipy', 'shapely', 'pillow',
    'matplotlib', 'spre-mmdet')

#: Environment variables that change thread counts or the CPU code paths of torch/oneDNN/MKL.
THREAD_ENV_VARS = (
    'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS',
    'OMP_DYNAMIC', 'OMP_PROC_BIND', 'KMP_AFFINITY', 'KMP_BLOCKTIME', 'MKL_CBWR',
    'MKL_ENABLE_INSTRUCTIONS', 'ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA',
    'CUDA_VISIBLE_DEVICES', 'CUBLAS_WORKSPACE_CONFIG', 'PYTHONHASHSEED')

#: Environment variables that turn this package's CPU kernels off (which changes how SpRe's
#: fused fold sums its scale gradients: the last bits of a norm_eval run) or its malloc settings
#: (which change only the time).
PACKAGE_ENV_VARS = ('SPRE_MMDET_NATIVE', 'SPRE_MMDET_MALLOC', 'MALLOC_MMAP_THRESHOLD_',
                    'MALLOC_TRIM_THRESHOLD_')


def _dist_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _module_version(name: str) -> Optional[str]:
    try:
        module = importlib.import_module(name)
    except Exception:  # noqa: BLE001  (a broken install is recorded as missing)
        return None
    return getattr(module, '__version__', '?')


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _usable_cpus() -> Optional[int]:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _torch_info() -> Dict[str, Any]:
    try:
        import torch
    except ImportError:
        return dict(version=None)
    info: Dict[str, Any] = dict(
        version=torch.__version__,
        # the build: '+cpu' wheels have no CUDA runtime, the standard wheel carries one even when
        # it runs on CPU; the two builds do not give bit-identical CPU results
        cuda_build=torch.version.cuda,
        git_version=getattr(torch.version, 'git_version', None),
        cuda_available=torch.cuda.is_available(),
        num_threads=torch.get_num_threads(),
        num_interop_threads=torch.get_num_interop_threads(),
        mkl_available=torch.backends.mkl.is_available(),
        mkldnn_available=torch.backends.mkldnn.is_available(),
        deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
    )
    try:
        info['cpu_capability'] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - older torch
        info['cpu_capability'] = None
    if info['cuda_available']:
        info['devices'] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info['cudnn'] = torch.backends.cudnn.version()
    return info


def _opencv_info() -> Dict[str, Any]:
    try:
        import cv2
    except Exception:  # noqa: BLE001
        return dict(version=None)
    return dict(version=cv2.__version__, num_threads=cv2.getNumThreads())


def _mmcv_info() -> Dict[str, Any]:
    info: Dict[str, Any] = dict(version=_module_version('mmcv'))
    if info['version'] is None:
        return info
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
        info.update(ops=True, ops_compiler=get_compiler_version(),
                    ops_cuda=get_compiling_cuda_version())
    except Exception:  # noqa: BLE001  (mmcv without compiled ops)
        info['ops'] = False
    return info


def collect_environment() -> Dict[str, Any]:
    """Everything a toy-set figure depends on, as a JSON-serialisable dict."""
    import numpy as np
    return dict(
        python=platform.python_version(),
        platform=platform.platform(),
        machine=platform.machine(),
        cpu=dict(model=_cpu_model(), logical_cpus=os.cpu_count(), usable_cpus=_usable_cpus()),
        torch=_torch_info(),
        mmcv=_mmcv_info(),
        mmengine=_module_version('mmengine'),
        mmdet=_module_version('mmdet'),
        numpy=np.__version__,
        opencv=_opencv_info(),
        pycocotools=_dist_version('pycocotools'),
        distributions={name: _dist_version(name) for name in DISTRIBUTIONS},
        env={name: os.environ.get(name) for name in THREAD_ENV_VARS + PACKAGE_ENV_VARS},
        # what spre_mmdet.allocator set in this process (None: glibc's defaults or the user's)
        malloc=allocator.applied_setting(),
    )


def write_environment(path: str, **extra: Any) -> Dict[str, Any]:
    """Write :func:`collect_environment` (plus ``extra`` entries, e.g. the thread count of the
    runs a parent process starts) as JSON to ``path`` (directories created)."""
    env = dict(collect_environment(), **extra)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(env, f, indent=2, sort_keys=True)
        f.write('\n')
    return env
