"""Fixes for current torch/mmengine, applied once on import of :mod:`spre_mmdet`.

mmengine 0.10.7 / mmdet 3.3 predate torch 2.6 and CPU-only distributed runs. Importing
``spre_mmdet`` (the tools do it before anything else) patches three things, and nothing else
lives here:

1. **Checkpoint loading.** Every mmengine checkpoint load (``--resume``, ``load_from``, the test
   ``CKPT``, ``init_cfg`` ``Pretrained``) goes through
   :func:`spre_mmdet.checkpoint.safe_torch_load`: weights-only with the allowlist runner
   checkpoints need, a clear refusal of pickled code, and a clear "corrupt or truncated" for
   broken files. Other schemes (http, open-mmlab, ...) call ``torch.load`` themselves; their
   weights-only refusal is translated into the same error.
2. **CPU distributed (gloo).** mmengine's pytorch launcher calls ``torch.cuda.set_device``
   unconditionally and the runner wraps the model in DDP with ``device_ids=[LOCAL_RANK]``.
   Without CUDA, a distributed run is refused unless CPU training was asked for
   (:func:`spre_mmdet.device.check_training_device`: ``SPRE_MMDET_CPU=1``, or the gloo backend
   on a machine without NVIDIA devices); it then initialises the process group with ``gloo``
   (an ``nccl`` request becomes ``gloo``), DDP is built without ``device_ids`` for CPU modules
   and SyncBN layers are reverted to BN (SyncBN needs a GPU).
   ``--launcher slurm`` (``tools/slurm_train.sh``) likewise: mmengine's slurm environment
   (rank, world size, master from ``SLURM_*``) without ``torch.cuda.set_device``, on gloo.
   With a GPU (or other accelerator) nothing changes.
3. **torchvision:// without torchvision.** ``torchvision://`` / ``modelzoo://`` checkpoints
   raise :class:`~spre_mmdet.errors.TorchvisionUnavailableError` with the fix (install
   torchvision, or point ``init_cfg.checkpoint`` / ``load_from`` at a local file) instead of a
   deep import error.
"""
import importlib
import os
import os.path as osp
import pickle
import warnings

import torch

from .checkpoint.safe_load import (is_weights_only_error, register_safe_globals,
                                   safe_torch_load, unsafe_checkpoint_error, unsafe_globals_of)
from .device import _accelerator_available, check_training_device
from .errors import TorchvisionUnavailableError

__all__ = ['apply']


# --------------------------------------------------------------------------------------
# 1. Checkpoint loading
# --------------------------------------------------------------------------------------
def _load_from_local(filename, map_location=None):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return safe_torch_load(filename, map_location=map_location)


_load_from_local.__name__ = 'load_from_local'  # mmengine logs the loader name


def _patch_checkpoint_loader() -> None:
    from mmengine.runner import checkpoint as ckpt_mod
    CheckpointLoader = ckpt_mod.CheckpointLoader
    if getattr(CheckpointLoader, '_spre_mmdet_patched', False):
        return
    CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)

    orig_tv = ckpt_mod.load_from_torchvision

    def load_from_torchvision(filename, map_location=None):
        try:
            importlib.import_module('torchvision')
        except Exception as e:  # ImportError, or a broken torchvision build
            raise TorchvisionUnavailableError(
                f'Checkpoint {filename!r} needs torchvision to resolve its URL, but torchvision '
                f'cannot be imported ({type(e).__name__}: {e}). Fix: install torchvision '
                f'matching your torch, or point the config at a local file instead, e.g. '
                f"--cfg-options model.backbone.init_cfg.checkpoint=/path/to/resnet50.pth (or "
                f"model.backbone.init_cfg=None / load_from=/path/to/checkpoint.pth).") from None
        return orig_tv(filename, map_location)

    CheckpointLoader.register_scheme(
        prefixes=('modelzoo://', 'torchvision://'), loader=load_from_torchvision, force=True)

    orig_load = CheckpointLoader.load_checkpoint.__func__

    def load_checkpoint(cls, filename, map_location=None, logger='current'):
        register_safe_globals()
        try:
            return orig_load(cls, filename, map_location, logger)
        except pickle.UnpicklingError as e:
            if not is_weights_only_error(e):
                raise
            raise unsafe_checkpoint_error(filename, unsafe_globals_of(filename, str(e))) from e

    CheckpointLoader.load_checkpoint = classmethod(load_checkpoint)
    CheckpointLoader._spre_mmdet_patched = True


# --------------------------------------------------------------------------------------
# 2. CPU distributed training with gloo
# --------------------------------------------------------------------------------------
def _patch_dist_launcher() -> None:
    from mmengine.dist import utils as dist_utils
    orig = dist_utils._init_dist_pytorch
    if getattr(orig, '_spre_mmdet_patched', False):
        return

    def _init_dist_pytorch(backend, init_backend='torch', **kwargs) -> None:
        # GPU / other accelerators: mmengine's behaviour (set_device + nccl) unchanged.
        if _accelerator_available() or init_backend != 'torch':
            return orig(backend, init_backend=init_backend, **kwargs)
        # no CUDA: only when asked for (SPRE_MMDET_CPU=1, or gloo on a machine without
        # NVIDIA devices); the GPU backend is then replaced by gloo
        check_training_device(distributed=True, backend=backend)
        if backend not in ('gloo', 'mpi'):
            backend = 'gloo'
        import torch.distributed as torch_dist
        torch_dist.init_process_group(backend=backend, **kwargs)

    _init_dist_pytorch._spre_mmdet_patched = True
    dist_utils._init_dist_pytorch = _init_dist_pytorch

    orig_slurm = dist_utils._init_dist_slurm

    def _init_dist_slurm(backend, port=None, init_backend='torch', **kwargs) -> None:
        # GPU: mmengine's behaviour. CPU: its environment set-up without set_device, on gloo.
        if _accelerator_available() or init_backend != 'torch':
            return orig_slurm(backend, port=port, init_backend=init_backend, **kwargs)
        import subprocess
        proc_id = int(os.environ['SLURM_PROCID'])
        if port is not None:
            os.environ['MASTER_PORT'] = str(port)
        os.environ.setdefault('MASTER_PORT', '29500')
        if 'MASTER_ADDR' not in os.environ:
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {os.environ["SLURM_NODELIST"]} | head -n1')
        os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
        os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', str(proc_id))
        os.environ['RANK'] = str(proc_id)
        _init_dist_pytorch(backend, init_backend=init_backend, **kwargs)

    dist_utils._init_dist_slurm = _init_dist_slurm


def _module_on_cpu(module: torch.nn.Module) -> bool:
    tensors = list(module.parameters()) + list(module.buffers())
    return bool(tensors) and all(t.device.type == 'cpu' for t in tensors)


def _patch_ddp_wrapper() -> None:
    from mmengine.model.wrappers.distributed import MMDistributedDataParallel as DDP
    orig_init = DDP.__init__
    if getattr(orig_init, '_spre_mmdet_patched', False):
        return

    def __init__(self, module, detect_anomalous_params: bool = False, **kwargs):
        if _module_on_cpu(module):
            # DDP on CPU modules must not get device_ids/output_device (runner passes
            # device_ids=[LOCAL_RANK]); SyncBN has no CPU implementation.
            kwargs['device_ids'] = None
            kwargs['output_device'] = None
            from mmengine.model import revert_sync_batchnorm
            if any('SyncBatchNorm' in type(m).__name__ for m in module.modules()):
                warnings.warn('SyncBatchNorm is not supported on CPU: reverting it to '
                              'BatchNorm for this CPU distributed run.')
                module = revert_sync_batchnorm(module)
        orig_init(self, module=module, detect_anomalous_params=detect_anomalous_params,
                  **kwargs)

    __init__._spre_mmdet_patched = True
    DDP.__init__ = __init__


# --------------------------------------------------------------------------------------
_APPLIED = False


def apply() -> None:
    """Apply all fixes (idempotent; called on import of ``spre_mmdet``)."""
    global _APPLIED
    if _APPLIED:
        return
    register_safe_globals()
    _patch_checkpoint_loader()
    _patch_dist_launcher()
    _patch_ddp_wrapper()
    _APPLIED = True


apply()
