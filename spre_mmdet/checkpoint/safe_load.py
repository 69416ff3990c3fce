"""Loading checkpoint files safely: no pickled code runs, and a broken file is called broken.

torch>=2.6 unpickles with ``weights_only=True``, which rejects the numpy arrays and mmengine
``HistoryBuffer`` objects that every runner checkpoint holds. :func:`safe_torch_load` keeps
``weights_only=True`` and allowlists exactly the globals such checkpoints need
(:data:`SAFE_GLOBALS`). Anything else pickled in a file (a callable such as ``os.system``, a
custom class) raises :class:`~spre_mmdet.errors.UnsafeCheckpointError` naming the global; the
file is never unpickled. A file you trust can be loaded by allowlisting its globals with
``torch.serialization.add_safe_globals([...])`` (e.g. in a module listed in ``custom_imports``),
or, for one run, with ``SPRE_MMDET_TRUST_CHECKPOINTS=1`` (full pickle: code in the file runs).

An empty, truncated or non-checkpoint file raises
:class:`~spre_mmdet.errors.CorruptCheckpointError` instead: it names the file, what is wrong
with it, and the checkpoint saved before it, if its folder has one. Turning safety off would not
help such a file, so the message does not suggest it.
"""
import os
import os.path as osp
import pickle
import re
import warnings
import zipfile
from typing import Any, List, Optional

import torch

from ..errors import CorruptCheckpointError, UnsafeCheckpointError

#: Environment variable that opts in to full-pickle loading of local checkpoints.
TRUST_ENV = 'SPRE_MMDET_TRUST_CHECKPOINTS'

#: what :func:`torch.save` files start with: a zip archive, or (legacy format) a pickle
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_PROTO = b'\x80'


def unsafe_checkpoint_error(source: Any, unsafe_globals: List[str]) -> UnsafeCheckpointError:
    """The refusal of ``source``, naming the offending globals and both ways to proceed."""
    names = ', '.join(unsafe_globals) if unsafe_globals else '(unknown)'
    listed = ', '.join(unsafe_globals) or '<global>'
    src = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
    error = UnsafeCheckpointError(
        f'Refusing to load checkpoint {src}: it contains pickled object(s) that are not on the '
        f'safe list: {names}. Loading it could run arbitrary code.\n'
        'If you trust this file, either allowlist exactly these globals before loading (e.g. '
        "in a module listed in the config's custom_imports): "
        f'torch.serialization.add_safe_globals([{listed}]), or set {TRUST_ENV}=1 for this run '
        'to load local checkpoints with full pickle.')
    error.unsafe_globals = list(unsafe_globals)
    return error


# ------------------------------------------------------------------------- the allowlist
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


#: what runner checkpoints pickle besides tensors (filled on first use)
SAFE_GLOBALS: List[Any] = []


def register_safe_globals() -> None:
    """Allowlist :data:`SAFE_GLOBALS` for ``torch.load(weights_only=True)`` (idempotent)."""
    if SAFE_GLOBALS:
        return
    import collections
    SAFE_GLOBALS.extend([collections.OrderedDict, collections.defaultdict] +
                        _numpy_safe_globals() + _mmengine_safe_globals())
    torch.serialization.add_safe_globals(SAFE_GLOBALS)


def trusted() -> bool:
    """Whether the user opted in to full-pickle loading (:data:`TRUST_ENV`)."""
    return os.environ.get(TRUST_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on')


# ------------------------------------------------------------------- diagnosing failures
_GLOBAL_RE = re.compile(r'GLOBAL (\S+?)(?: was not an allowed| whose module|\s|$)')


def unsafe_globals_of(source: Any, message: str) -> List[str]:
    """The globals a weights-only load refused, from the file or from the error message."""
    names: List[str] = []
    if isinstance(source, (str, os.PathLike)) and osp.isfile(source):
        try:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(source))
        except Exception:  # noqa: BLE001  (best effort; fall back to the message)
            names = []
    if not names:
        names = _GLOBAL_RE.findall(message)
    if not names:
        found = re.search(r'unrecognized function (.+?)(?:\n|$)', message)
        if found:
            names = [found.group(1).strip()]
    return list(dict.fromkeys(names))


def is_weights_only_error(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) and 'Weights only load failed' in str(exc)


def damage(path: str) -> Optional[str]:
    """What is structurally wrong with the checkpoint file ``path``, or ``None`` if nothing
    visible is (it may still hold objects the allowlist refuses)."""
    size = osp.getsize(path)
    if size == 0:
        return 'the file is empty (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(len(_ZIP_MAGIC))
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f'the file is truncated ({size} bytes; the end of its zip archive is '
                    'missing, e.g. a save or copy that was cut off)')
        try:
            with zipfile.ZipFile(path) as archive:
                broken = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            return f'its zip archive is damaged ({e})'
        return f'archive member {broken} is damaged (checksum mismatch)' if broken else None
    if head.startswith(_PICKLE_PROTO):
        return None  # legacy (pre-zip) torch format: only unpickling can tell
    return (f'it is not a PyTorch checkpoint (a checkpoint starts with a zip or pickle header; '
            f'this file starts with {head!r})')


def _previous_checkpoint(path: str) -> Optional[str]:
    """The newest other ``.pth`` file in the folder of ``path`` that is older than it."""
    folder = osp.dirname(osp.abspath(path))
    try:
        mtime = osp.getmtime(path)
        others = [osp.join(folder, name) for name in os.listdir(folder)
                  if name.endswith('.pth') and osp.join(folder, name) != osp.abspath(path)]
    except OSError:
        return None
    older = [p for p in others if osp.getmtime(p) <= mtime and osp.getsize(p) > 0]
    return max(older, key=osp.getmtime) if older else None


def corrupt_checkpoint_error(path: str, what: str) -> CorruptCheckpointError:
    previous = _previous_checkpoint(path)
    hint = (f'Use the checkpoint saved before it ({previous}), e.g. --resume {previous}, '
            if previous else 'Use an earlier checkpoint, ')
    return CorruptCheckpointError(
        f'Checkpoint {path} is corrupt or truncated: {what}. It cannot be loaded (and is not a '
        f'safety refusal: trusting the file would not help). {hint}or save/download it again.')


def safe_torch_load(f: Any, map_location: Any = None) -> Any:
    """``torch.load(f, weights_only=True)`` with the mmengine/numpy allowlist.

    Raises:
        UnsafeCheckpointError: the file pickles a global outside the allowlist.
        CorruptCheckpointError: the file is empty, truncated or not a checkpoint.
    """
    register_safe_globals()
    path = os.fspath(f) if isinstance(f, (str, os.PathLike)) else None
    if path is not None and osp.isfile(path) and osp.getsize(path) == 0:
        raise corrupt_checkpoint_error(path, 'the file is empty (0 bytes)')
    weights_only = not trusted()
    if not weights_only:
        warnings.warn(f'{TRUST_ENV} is set: loading {f} with full pickle (weights_only=False). '
                      'Only do this for checkpoints you trust.')
    try:
        return torch.load(f, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # noqa: BLE001  (a broken pickle can raise nearly anything)
        if path is None or not osp.isfile(path):
            if is_weights_only_error(e):
                raise unsafe_checkpoint_error(f, unsafe_globals_of(f, str(e))) from e
            raise
        what = damage(path)
        if what is None and is_weights_only_error(e):
            names = unsafe_globals_of(path, str(e))
            if names:
                raise unsafe_checkpoint_error(f, names) from e
            # refused without naming a global: the pickle stream itself is broken
            what = f'it cannot be unpickled ({str(e).strip().splitlines()[-1]})'
        elif what is None and isinstance(e, (EOFError, pickle.UnpicklingError)):
            what = f'it cannot be unpickled ({type(e).__name__}: {e or "unexpected end"})'
        if what is not None:
            raise corrupt_checkpoint_error(path, what) from e
        raise
