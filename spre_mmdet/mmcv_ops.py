"""Does the installed mmcv have the compiled ops the run needs? Checked by ``tools/train.py`` and
``tools/test.py`` before the runner is built.

mmdet's detectors call mmcv's compiled ops (NMS, RoIAlign) on the device the model runs on.
mmcv built without CUDA (``FORCE_CUDA`` unset on a machine without a GPU, e.g. the CPU wheel
this project's CI uses) imports fine and trains on CPU, but on a GPU the first NMS or RoIAlign
fails deep inside the run (``nms_impl: implementation for device cuda:0 not found``). This
module says so before anything starts, with the fix. mmengine's runner puts the model on CUDA
whenever ``torch.cuda.is_available()``, so that is when CUDA ops are required.
"""
from typing import Any, Optional

import torch

from .errors import StackError

__all__ = ['check_mmcv_ops', 'mmcv_ops_problem', 'BUILD_FIX']

#: how to get mmcv 2.1.0 with CUDA ops (docs/gpu.md, "The mmcv build")
BUILD_FIX = ('Fix: on this machine run `bash scripts/install.sh` (where torch sees a GPU it '
             'builds mmcv 2.1.0 with CUDA ops for the local GPU), or build the wheel with '
             '`bash scripts/build_mmcv_cuda.sh` and `pip install` the wheel it prints; to train '
             'on the CPU instead, set SPRE_MMDET_CPU=1 CUDA_VISIBLE_DEVICES="".')


def _needs_ops(cfg: Any) -> bool:
    """mmpretrain classifiers use no compiled mmcv op; mmdet's detectors do."""
    return cfg is None or cfg.get('default_scope', None) != 'mmpretrain'


def _run_cuda_op() -> None:
    """One NMS on the GPU: catches ops built for another GPU architecture (``no kernel image
    is available``) as well as ops built without CUDA."""
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]], device='cuda')
    nms(boxes, torch.tensor([0.9, 0.8], device='cuda'), 0.5)
    torch.cuda.synchronize()


def mmcv_ops_problem(cuda: Optional[bool] = None, run_op: bool = True) -> Optional[str]:
    """Why the installed mmcv cannot run a detector here, or ``None``.

    Args:
        cuda: will the run use CUDA (default: ``torch.cuda.is_available()``, mmengine's rule).
        run_op: also run one NMS on the GPU (a CUDA run only).
    """
    try:
        import mmcv
        from mmcv.ops import get_compiling_cuda_version
    except Exception as e:  # noqa: BLE001  (mmcv-lite, or ops built against another torch)
        return (f'mmcv\'s compiled ops do not import ({type(e).__name__}: {e}): mmcv-lite, a '
                f'build without MMCV_WITH_OPS=1, or ops built against another torch. {BUILD_FIX}')
    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        return None
    compiled = get_compiling_cuda_version()
    if compiled == 'not available':
        return (f'mmcv {mmcv.__version__} was built without CUDA ops '
                f'(mmcv.ops.get_compiling_cuda_version() is {compiled!r}), but this run uses '
                f'the GPU (torch.cuda.is_available() is True): its first NMS/RoIAlign would fail '
                f'("nms_impl: implementation for device cuda:0 not found"). {BUILD_FIX}')
    torch_cuda = torch.version.cuda or ''
    if compiled.split('.')[0] != torch_cuda.split('.')[0]:
        return (f'mmcv {mmcv.__version__}\'s CUDA ops were built with CUDA {compiled}, torch '
                f'{torch.__version__} with CUDA {torch_cuda}: rebuild mmcv against this torch. '
                f'{BUILD_FIX}')
    if run_op:
        try:
            _run_cuda_op()
        except Exception as e:  # noqa: BLE001
            return (f'mmcv {mmcv.__version__}\'s CUDA ops (built with CUDA {compiled}) fail on '
                    f'this GPU ({type(e).__name__}: {str(e).strip().splitlines()[0]}); "no '
                    f'kernel image" means they were built for other architectures '
                    f'(TORCH_CUDA_ARCH_LIST). {BUILD_FIX}')
    return None


def check_mmcv_ops(cfg: Any = None) -> None:
    """Raise :class:`~spre_mmdet.errors.StackError` with the fix when the run of ``cfg`` would
    reach an mmcv op this mmcv cannot run (a CPU-only mmcv on a GPU machine, above all)."""
    if not _needs_ops(cfg):
        return
    problem = mmcv_ops_problem()
    if problem is not None:
        raise StackError(problem)
