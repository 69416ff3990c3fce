"""What a result was measured in: the one environment record of every tool and benchmark.

Training from scratch on CPU is bit-exact only for a fixed software stack, thread count and CPU
instruction set (docs/reproducibility.md), and a GPU timing means nothing without the device,
driver and sparse-kernel libraries: a figure without this record cannot be compared.

:func:`collect_environment` is mmengine's ``collect_env`` (Python, compiler, the torch build and
its compiling details, torchvision, OpenCV, MMEngine, the GPUs and NVCC), made JSON-serialisable,
plus what the figures depend on and it leaves out: the thread settings and the environment
variables that set them, the versions of numpy, pycocotools, mmcv (and whether its ops are
compiled), mmdet and the distribution that provides ``cv2``, the CPU model and instruction set,
and on CUDA each device's name, compute capability and memory, the driver, cuDNN, cuSPARSELt and
whether the device can run 2:4 sparse tensor-core kernels. :func:`write_environment` stores it
(``tools/demo.py`` and the sweep write ``environment.json`` next to their results) and
:func:`summary_line` gives its one-line form.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import warnings
from importlib import metadata
from typing import Any, Dict, List, Optional

__all__ = ['DISTRIBUTIONS', 'ENV_VARS', 'collect_environment', 'nvidia_smi', 'summary_line',
           'write_environment']

#: Installed distributions whose version is recorded (``None`` when not installed). Several
#: opencv distributions provide the same ``cv2`` module; all are listed so a mix shows up.
DISTRIBUTIONS = (
    'torch', 'torchvision', 'triton', 'mmcv', 'mmcv-lite', 'mmengine', 'mmdet', 'mmpretrain',
    'numpy', 'opencv-python', 'opencv-python-headless', 'opencv-contrib-python',
    'opencv-contrib-python-headless', 'pycocotools', 'scipy', 'shapely', 'pillow', 'matplotlib',
    'nvidia-cusparselt-cu12', 'nvidia-cusparselt-cu13', 'spre-mmdet')

#: Environment variables that set thread counts or the CPU/GPU code paths of torch, oneDNN,
#: MKL and cuBLAS (``None`` in the record when unset).
ENV_VARS = (
    'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'NUMEXPR_NUM_THREADS',
    'OMP_DYNAMIC', 'OMP_PROC_BIND', 'KMP_AFFINITY', 'KMP_BLOCKTIME', 'MKL_CBWR',
    'MKL_ENABLE_INSTRUCTIONS', 'ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'DNNL_MAX_CPU_ISA',
    'CUDA_VISIBLE_DEVICES', 'CUBLAS_WORKSPACE_CONFIG', 'PYTHONHASHSEED')

#: mmengine ``collect_env`` entries left out: not the environment (the global numpy RNG state)
_DROPPED = ('numpy_random_seed',)


def _plain(value: Any) -> Any:
    """``value`` as a JSON type (numpy scalars to Python ones, anything else to ``str``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, 'item'):
        return value.item()
    return str(value)


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


def _mmengine_record() -> Dict[str, Any]:
    """mmengine's ``collect_env``; where mmengine is not installed (the GPU check needs only
    torch), or it fails, its first entries from the interpreter and torch."""
    try:
        from mmengine.utils.dl_utils import collect_env
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # distutils' deprecation
            record = collect_env()
    except Exception as e:  # noqa: BLE001
        import torch
        return {'sys.platform': sys.platform, 'Python': sys.version.replace('\n', ''),
                'CUDA available': torch.cuda.is_available(), 'PyTorch': torch.__version__,
                'MMEngine': _module_version('mmengine'),
                'collect_env': f'not available ({type(e).__name__}: {e})'}
    return {key: _plain(value) for key, value in record.items() if key not in _DROPPED}


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


def _cpu_capability() -> Optional[str]:
    import torch
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - older torch
        return None


def _torch_info() -> Dict[str, Any]:
    import torch
    return dict(
        version=torch.__version__,
        # the build: '+cpu' wheels have no CUDA runtime, the standard wheel carries one even when
        # it runs on CPU; the two builds do not give bit-identical CPU results
        cuda_build=torch.version.cuda,
        git_version=getattr(torch.version, 'git_version', None),
        mkl_available=torch.backends.mkl.is_available(),
        mkldnn_available=torch.backends.mkldnn.is_available(),
        deterministic_algorithms=torch.are_deterministic_algorithms_enabled())


def _threads() -> Dict[str, Any]:
    """The thread counts in use now (the environment variables are in ``env``)."""
    import torch
    info: Dict[str, Any] = dict(torch=torch.get_num_threads(),
                                torch_interop=torch.get_num_interop_threads(), opencv=None)
    try:
        import cv2
        info['opencv'] = cv2.getNumThreads()
    except Exception:  # noqa: BLE001
        pass
    return info


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


def nvidia_smi() -> Optional[Dict[str, str]]:
    """The first GPU's name, driver, clocks, power limit and temperature from ``nvidia-smi``
    (``None`` if it is not installed or fails)."""
    exe = shutil.which('nvidia-smi')
    if exe is None:
        return None
    fields = ('name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,'
              'power.limit,temperature.gpu,persistence_mode')
    try:
        out = subprocess.run([exe, f'--query-gpu={fields}', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ''
    return dict(zip(fields.split(','), (v.strip() for v in first.split(','))))


def _driver_api_version() -> Optional[str]:
    """The CUDA driver API version (``cuDriverGetVersion``), e.g. ``'13.0'``."""
    import ctypes
    try:
        lib = ctypes.CDLL('libcuda.so.1')
        value = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(value)) != 0:
            return None
        return f'{value.value // 1000}.{value.value % 1000 // 10}'
    except (OSError, AttributeError):
        return None


def _cuda_info() -> Optional[Dict[str, Any]]:
    """Devices, driver and CUDA libraries; ``None`` without CUDA."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch's warning when a driver is missing
        if not torch.cuda.is_available():
            return None
    cslt = getattr(torch.backends, 'cusparselt', None)
    cslt_ok = bool(cslt is not None and cslt.is_available())
    devices: List[Dict[str, Any]] = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(dict(
            name=props.name, capability=f'{props.major}.{props.minor}',
            total_memory_gib=round(props.total_memory / 2 ** 30, 2),
            multiprocessors=props.multi_processor_count,
            l2_cache_mib=round(getattr(props, 'L2_cache_size', 0) / 2 ** 20, 1) or None,
            # 2:4 sparse tensor cores: Ampere (sm80) and newer, through cuSPARSELt or CUTLASS
            sparse_tensor_cores=(props.major, props.minor) >= (8, 0)))
    smi = nvidia_smi()
    return dict(
        runtime=torch.version.cuda, driver=smi.get('driver_version') if smi else None,
        driver_api=_driver_api_version(), cudnn=torch.backends.cudnn.version(),
        cusparselt_available=cslt_ok, cusparselt=cslt.version() if cslt_ok else None,
        cusparselt_max_alg_id=(cslt.get_max_alg_id()
                               if cslt_ok and hasattr(cslt, 'get_max_alg_id') else None),
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        devices=devices, nvidia_smi=smi)


def collect_environment(device: Optional[str] = None) -> Dict[str, Any]:
    """Everything a figure depends on, as a JSON-serialisable dict (see the module docstring):
    mmengine's ``collect_env`` entries (``'Python'``, ``'PyTorch'``, ``'GPU 0'``, ...) and
    ``platform``, ``cpu``, ``threads``, ``env``, ``torch``, ``mmcv``, ``mmdet``, ``numpy``,
    ``pycocotools``, ``opencv``, ``distributions`` and ``cuda`` (``None`` without CUDA).
    ``device``, if given, is recorded as the device the figures were measured on."""
    import numpy as np
    record = _mmengine_record()
    record.update(
        platform=platform.platform(),
        python=platform.python_version(),
        cpu=dict(model=_cpu_model(), machine=platform.machine(), logical_cpus=os.cpu_count(),
                 usable_cpus=_usable_cpus(), capability=_cpu_capability()),
        threads=_threads(),
        env={name: os.environ.get(name) for name in ENV_VARS},
        torch=_torch_info(),
        mmcv=_mmcv_info(),
        mmdet=_module_version('mmdet'),
        numpy=np.__version__,
        pycocotools=_dist_version('pycocotools'),
        opencv=_module_version('cv2'),
        distributions={name: _dist_version(name) for name in DISTRIBUTIONS},
        cuda=_cuda_info(),
    )
    if device is not None:
        record['device'] = str(device)
    return record


def summary_line(env: Dict[str, Any]) -> str:
    """A :func:`collect_environment` record in one line: versions, threads, CPU, and where
    there is CUDA the GPU (the recorded ``device``'s, else the first) and its driver."""
    threads = env['threads']['torch']
    line = (f'python {env["python"]}, torch {env["torch"]["version"]} ({threads} thread'
            f'{"s" if threads != 1 else ""}), mmcv {env["mmcv"]["version"]}, '
            f'mmdet {env["mmdet"]}, numpy {env["numpy"]}, opencv {env["opencv"]}, '
            f'{env["cpu"]["model"]} ({env["cpu"]["capability"]})')
    cuda = env.get('cuda')
    if cuda and cuda['devices']:
        recorded = str(env.get('device') or '')
        index = int(recorded.split(':')[1]) if recorded.startswith('cuda:') else 0
        device = cuda['devices'][min(index, len(cuda['devices']) - 1)]
        line += (f', {device["name"]} sm{device["capability"]}, CUDA {cuda["runtime"]}, '
                 f'driver {cuda["driver"] or cuda["driver_api"]}')
    return line


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
