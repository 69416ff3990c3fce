"""Fixes for current torch/mmengine, applied once on import of :mod:`spre_mmdet`.

mmengine 0.10.7 / mmdet 3.3 predate torch 2.6 and CPU-only distributed runs. Importing
``spre_mmdet`` (the tools do it before anything else) applies three narrow fixes:

1. **Safe checkpoint loading.** torch>=2.6 unpickles checkpoints with ``weights_only=True``,
   which rejects the numpy arrays and mmengine ``HistoryBuffer`` objects a runner checkpoint
   holds, so ``--resume`` and ``tools/test.py`` fail. We keep ``weights_only=True`` and
   allowlist exactly the globals such checkpoints need (:data:`SAFE_GLOBALS`); every
   mmengine checkpoint load (``--resume``, ``load_from``, the test ``CKPT``, ``init_cfg``
   ``Pretrained``) goes through :func:`safe_torch_load`. Anything else pickled in a file
   (a callable such as ``os.system``, a custom class) raises :class:`UnsafeCheckpointError`
   naming the global. To load a file you trust, either allowlist the global(s) with
   ``torch.serialization.add_safe_globals([...])`` in a module you import (e.g. through
   ``custom_imports``), or set ``SPRE_MMDET_TRUST_CHECKPOINTS=1`` for that run, which loads
   local checkpoints with full pickle (arbitrary code execution if the file is hostile).
2. **CPU distributed (gloo).** mmengine's pytorch launcher calls ``torch.cuda.set_device``
   unconditionally and the runner wraps the model in DDP with ``device_ids=[LOCAL_RANK]``.
   Without CUDA, ``--launcher pytorch`` now initialises the process group with ``gloo``
   (an ``nccl`` request is switched to ``gloo`` with a warning), DDP is built without
   ``device_ids`` for CPU modules and SyncBN layers are reverted to BN (SyncBN needs a GPU).
   With a GPU (or other accelerator) nothing changes.
3. **torchvision:// without torchvision.** ``torchvision://`` / ``modelzoo://`` checkpoints
   raise :class:`TorchvisionUnavailableError` with the fix (install torchvision, or point
   ``init_cfg.checkpoint`` / ``load_from`` at a local file) instead of a deep import error.

The tools catch :data:`USER_ERRORS` at top level and print only the message
(see :func:`run_tool`). :func:`check_dataset_paths` turns a missing dataset into a
:class:`DatasetNotFoundError` that says how to generate the synthetic set.
"""
from __future__ import annotations

import importlib
import logging
import os
import os.path as osp
import pickle
import re
import sys
import warnings
from typing import Any, Callable, Iterable, List, Sequence

import torch

__all__ = [
    'UnsafeCheckpointError', 'TorchvisionUnavailableError', 'DatasetNotFoundError',
    'USER_ERRORS', 'TRUST_ENV', 'SAFE_GLOBALS', 'safe_torch_load', 'check_dataset_paths',
    'run_tool', 'apply'
]

#: Environment variable that opts in to full-pickle loading of local checkpoints.
TRUST_ENV = 'SPRE_MMDET_TRUST_CHECKPOINTS'

_TOY_COCO_HINT = 'python tools/make_toy_coco.py'

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Errors shown to users without a traceback
# --------------------------------------------------------------------------------------
class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects outside the allowlist (refused unloaded)."""

    def __init__(self, source: Any, unsafe_globals: Sequence[str], detail: str = ''):
        self.source = source
        self.unsafe_globals = list(unsafe_globals)
        self.detail = detail
        names = ', '.join(self.unsafe_globals) if self.unsafe_globals else '(unknown)'
        src = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
        listed = ', '.join(self.unsafe_globals) or '<global>'
        msg = (
            f'Refusing to load checkpoint {src}: it contains pickled object(s) that are not '
            f'on the safe list: {names}. Loading it could run arbitrary code.\n'
            f'If you trust this file, either allowlist exactly these globals before loading '
            f'(e.g. in a module listed in the config\'s custom_imports): '
            f'torch.serialization.add_safe_globals([{listed}]), '
            f'or set {TRUST_ENV}=1 for this run to load local checkpoints with full pickle.')
        super().__init__(msg)


class TorchvisionUnavailableError(ImportError):
    """A ``torchvision://`` checkpoint was requested but torchvision is not importable."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file/directory named in the config does not exist."""


#: Exceptions the tools report as a one-line message (exit code 1), not a traceback.
USER_ERRORS = (UnsafeCheckpointError, TorchvisionUnavailableError, DatasetNotFoundError)


# --------------------------------------------------------------------------------------
# 1. Safe checkpoint loading
# --------------------------------------------------------------------------------------
def _history_buffer_cls():
    from mmengine.logging.history_buffer import HistoryBuffer
    return HistoryBuffer


def _restricted_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` inside weights-only unpickling.

    ``HistoryBuffer.__getstate__`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'mean')`` etc. Only that pattern is allowed: public methods
    of ``HistoryBuffer`` (or a subclass); anything else is refused.
    """
    hb = _history_buffer_cls()
    if (isinstance(obj, type) and issubclass(obj, hb) and isinstance(name, str)
            and not name.startswith('_') and callable(getattr(obj, name, None))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL builtins.getattr({obj!r}, {name!r}) is only allowed '
        'for HistoryBuffer statistics methods')


def _numpy_safe_globals() -> List[Any]:
    import numpy as np
    try:  # numpy>=2
        from numpy._core import multiarray as _ma
        core = 'numpy._core'
    except ImportError:  # numpy<2
        from numpy.core import multiarray as _ma  # type: ignore
        core = 'numpy.core'
    out: List[Any] = [np.ndarray, np.dtype]
    # Checkpoints written under numpy 1.x name ``numpy.core.multiarray.*``, under numpy 2.x
    # ``numpy._core.multiarray.*``: accept both spellings for the same two functions.
    for mod in sorted({core, 'numpy.core', 'numpy._core'}):
        out.append((_ma._reconstruct, f'{mod}.multiarray._reconstruct'))
        out.append((_ma.scalar, f'{mod}.multiarray.scalar'))
    # dtype classes (numpy>=1.25): e.g. numpy.dtypes.Float64DType
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                out.append((obj, f'numpy.dtypes.{name}'))
    # scalar types (np.float64 etc. may be pickled as classes in dataset_meta / metrics)
    for name in ('bool_', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                 'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128'):
        obj = getattr(np, name, None)
        if obj is not None:
            out.append((obj, f'numpy.{obj.__name__}'))
    return out


def _mmengine_safe_globals() -> List[Any]:
    from mmengine.config.config import ConfigDict
    hb = _history_buffer_cls()
    return [hb, ConfigDict, (_restricted_getattr, 'builtins.getattr')]


def _build_safe_globals() -> List[Any]:
    import collections
    return ([collections.OrderedDict, collections.defaultdict] + _numpy_safe_globals()
            + _mmengine_safe_globals())


SAFE_GLOBALS: List[Any] = []


def _register_safe_globals() -> None:
    if SAFE_GLOBALS:
        return
    SAFE_GLOBALS.extend(_build_safe_globals())
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def _trusted() -> bool:
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


_GLOBAL_RE = re.compile(r'GLOBAL (\S+?)(?: was not an allowed| whose module|\s|$)')


def _unsafe_globals_of(source: Any, message: str) -> List[str]:
    names: List[str] = []
    if isinstance(source, (str, os.PathLike)) and osp.isfile(source):
        try:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(source))
        except Exception:  # noqa: BLE001  (best effort; fall back to the message)
            names = []
    if not names:
        names = _GLOBAL_RE.findall(message)
    if not names:
        m = re.search(r'unrecognized function (.+?)(?:\n|$)', message)
        if m:
            names = [m.group(1).strip()]
    return list(dict.fromkeys(names))


def _is_weights_only_error(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and 'Weights only load failed' in str(exc)


def safe_torch_load(f: Any, map_location: Any = None) -> Any:
    """``torch.load(f, weights_only=True)`` with the mmengine/numpy allowlist.

    Raises :class:`UnsafeCheckpointError` for any other pickled global. With
    ``SPRE_MMDET_TRUST_CHECKPOINTS=1`` the file is loaded with full pickle instead.
    """
    _register_safe_globals()
    if _trusted():
        warnings.warn(f'{TRUST_ENV} is set: loading {f} with full pickle (weights_only=False). '
                      'Only do this for checkpoints you trust.')
        return torch.load(f, map_location=map_location, weights_only=False)
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not _is_weights_only_error(e):
            raise
        raise UnsafeCheckpointError(f, _unsafe_globals_of(f, str(e)), str(e)) from e


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

    # Other schemes (http, open-mmlab, ...) call torch.load themselves (weights_only=True by
    # default on torch>=2.6); translate their refusal into the same clear error.
    orig_load = CheckpointLoader.load_checkpoint.__func__

    def load_checkpoint(cls, filename, map_location=None, logger='current'):
        _register_safe_globals()
        try:
            return orig_load(cls, filename, map_location, logger)
        except pickle.UnpicklingError as e:
            if not _is_weights_only_error(e):
                raise
            raise UnsafeCheckpointError(filename, _unsafe_globals_of(filename, str(e)),
                                        str(e)) from e

    CheckpointLoader.load_checkpoint = classmethod(load_checkpoint)
    CheckpointLoader._spre_mmdet_patched = True


# --------------------------------------------------------------------------------------
# 2. CPU distributed training with gloo
# --------------------------------------------------------------------------------------
def _accelerator_available() -> bool:
    if torch.cuda.is_available():
        return True
    try:
        from mmengine.device import (is_mlu_available, is_musa_available,
                                     is_npu_available)
        return bool(is_mlu_available() or is_npu_available() or is_musa_available())
    except Exception:  # noqa: BLE001
        return False


def _patch_dist_launcher() -> None:
    from mmengine.dist import utils as dist_utils
    orig = dist_utils._init_dist_pytorch
    if getattr(orig, '_spre_mmdet_patched', False):
        return

    def _init_dist_pytorch(backend, init_backend='torch', **kwargs) -> None:
        # GPU / other accelerators: mmengine's behaviour (set_device + nccl) unchanged.
        if _accelerator_available() or init_backend != 'torch':
            return orig(backend, init_backend=init_backend, **kwargs)
        if backend not in ('gloo', 'mpi'):
            warnings.warn(f'CUDA is not available: initialising torch.distributed with the '
                          f'gloo backend instead of {backend!r}.')
            backend = 'gloo'
        import torch.distributed as torch_dist
        torch_dist.init_process_group(backend=backend, **kwargs)

    _init_dist_pytorch._spre_mmdet_patched = True
    dist_utils._init_dist_pytorch = _init_dist_pytorch


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
# Dataset presence check and tool entry point
# --------------------------------------------------------------------------------------
def _iter_dataset_cfgs(ds: Any) -> Iterable[Any]:
    if not isinstance(ds, dict):
        return
    yield ds
    inner = ds.get('dataset')
    if inner is not None:
        yield from _iter_dataset_cfgs(inner)
    for d in ds.get('datasets', None) or []:
        yield from _iter_dataset_cfgs(d)


def _is_remote(path: str) -> bool:
    return '://' in path


def check_dataset_paths(cfg: Any, loaders: Sequence[str]) -> None:
    """Raise :class:`DatasetNotFoundError` if a dataset in ``cfg.<loader>`` is missing.

    Checks ``data_root`` and ``ann_file`` (joined with ``data_root`` when relative, as
    mmengine's ``BaseDataset`` does) of every (wrapped) dataset of the named dataloaders.
    """
    for key in loaders:
        loader = cfg.get(key, None)
        if not isinstance(loader, dict):
            continue
        for ds in _iter_dataset_cfgs(loader.get('dataset')):
            root = ds.get('data_root') or ''
            ann = ds.get('ann_file') or ''
            if not isinstance(root, str) or not isinstance(ann, str):
                continue
            missing = None
            if root and not _is_remote(root) and not osp.exists(root):
                missing = root
            elif ann and not _is_remote(ann):
                path = ann if (osp.isabs(ann) or not root) else osp.join(root, ann)
                if not _is_remote(path) and not osp.exists(path):
                    missing = path
            if missing is not None:
                raise DatasetNotFoundError(
                    f'Dataset not found: {missing} (from {key}.dataset: data_root='
                    f'{root!r}, ann_file={ann!r}). Generate the synthetic toy COCO set with '
                    f'`{_TOY_COCO_HINT}`, or point the config at your data, e.g. '
                    f'--cfg-options {key}.dataset.data_root=/path/to/coco/')


def run_tool(main: Callable[[], Any]) -> None:
    """Run a tool's ``main``; print :data:`USER_ERRORS` as a message and exit 1."""
    try:
        main()
    except USER_ERRORS as e:
        print(f'ERROR: {e}', file=sys.stderr)
        sys.exit(1)


# --------------------------------------------------------------------------------------
_APPLIED = False


def apply() -> None:
    """Apply all fixes (idempotent; called on import of ``spre_mmdet``)."""
    global _APPLIED
    if _APPLIED:
        return
    _register_safe_globals()
    _patch_checkpoint_loader()
    _patch_dist_launcher()
    _patch_ddp_wrapper()
    _APPLIED = True


apply()
